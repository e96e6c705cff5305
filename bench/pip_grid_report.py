"""Markdown tables from one or more bench/pip_grid.py JSON files: every variant's PPL@128 and zero-shot average
(mean ± sample std over the seeds, and min..max; also without BoolQ where the JSON has it), per unit and ratio,
with each PIP variant's change against the best non-PIP method of the same unit and ratio. Variants of a grid run
with config overrides (pip_grid.py --set) are labelled with them, e.g. `pip [perturbation.draws=4]`.

    python bench/pip_grid_report.py bench/out/pip_grid_width.json bench/out/pip_grid_depth.json > table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pipsteps (torch-free registry)
from pipsteps.methods import PIP_METHODS  # noqa: E402


def is_pip(method: str) -> bool:
    return method.split(" ")[0].split("-")[0] in PIP_METHODS  # "pip-fisher_diff", "pip [perturbation.draws=4]"


def cell(s: dict | None, digits: int = 1, scale: float = 1.0) -> str:
    if not s:
        return "–"
    m, sd, lo, hi = (s[k] * scale for k in ("mean", "std", "min", "max"))
    if s["n"] == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {sd:.{digits}f} ({lo:.{digits}f}..{hi:.{digits}f})"


def main(paths: list[str]) -> None:
    variants, dense = {}, None
    for p in paths:
        data = json.loads(Path(p).read_text())
        tag = f" [{', '.join(data['overrides'])}]" if data.get("overrides") else ""  # pip_grid.py --set
        for k, v in data["variants"].items():
            if k == "dense":
                dense = dense or v
            else:
                unit, method, ratio = k.split("/")
                variants[f"{unit}/{method}{tag}/{ratio}"] = v
    print(f"dense: PPL@128 {cell(dense['ppl128'], 2)}, zero-shot avg {cell(dense['zs_avg'], 1, 100)} %, "
          f"without BoolQ {cell(dense.get('zs_avg_wo_boolq'), 1, 100)} %\n")
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for k, v in variants.items():
        unit, rest = k.split("/", 1)  # a --set label may hold slashes (model.source=/path)
        method, ratio = rest.rsplit("/", 1)
        groups.setdefault((unit, ratio), []).append((method, v))
    for (unit, ratio), rows in sorted(groups.items()):
        rows.sort(key=lambda mv: mv[1]["ppl128"]["mean"])
        base = [v["ppl128"]["mean"] for m, v in rows if not is_pip(m)]
        best = min(base) if base else None
        best_name = next((m for m, v in rows if not is_pip(m)), None)
        print(f"\n**{unit}, target {ratio[1:]}** (best non-PIP: `{best_name}`)\n")
        print("| method | score | params | PPL@128 mean ± std (min..max) | vs best non-PIP | zero-shot avg % "
              "| without BoolQ % | seeds | PPL@128 per seed |")
        print("|---|---|---|---|---|---|---|---|---|")
        for m, v in rows:
            rel = f"{(v['ppl128']['mean'] / best - 1) * 100:+.1f}%" if best and is_pip(m) else ""
            zs = v["zs_avg"]
            per_seed = " / ".join(f"{x:.1f}" for x in v["ppl128"]["values"])
            print(f"| `{m}` | {v.get('score') or '–'} | {v['params'] / 1e6:.2f} M | {cell(v['ppl128'])} | {rel} "
                  f"| {cell(zs, 1, 100)} | {cell(v.get('zs_avg_wo_boolq'), 1, 100)} | {v['ppl128']['n']} "
                  f"| {per_seed} |")


if __name__ == "__main__":
    main(sys.argv[1:])
