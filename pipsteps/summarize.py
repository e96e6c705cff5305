"""Step: the summary table, dense vs every pruned variant (results/summary.tsv and results/summary.md).

Reads the step outputs by the workflow's path convention under `--results`: the dense model and calibration
metrics, each stage's evaluation, each variant's plan, round JSONs and gradient metrics (for wall times).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps.io import read_json, write_text

log = logging.getLogger("pipsteps.summarize")


def grads_json(results: Path, stage: str, r: int, view: str) -> Path:
    """Round 1 gradients are the dense model's, shared by every variant."""
    where = "base" if r == 1 else f"{stage}/round_{r}"
    return results / where / f"grads_{view}.json"


def stage_row(results: Path, stage: str) -> dict[str, Any]:
    ev = read_json(results / stage / "eval" / "metrics.json")
    row: dict[str, Any] = {"stage": "dense" if stage == "base" else stage, "method": "-", "score": "-",
                           "layers": ev["num_layers"], "params": ev["params_total"],
                           "params_non_emb": ev["params_non_embedding"]}
    for ds, by_len in ev["ppl"].items():
        for L, v in by_len.items():
            row[f"ppl_{ds}@{L}"] = round(v, 3)
    row.update(ratio=0.0, removed_layers="-", grads_s=0.0, prune_s=0.0, eval_s=round(ev["wall_s"], 1))
    if stage != "base":
        plan = read_json(results / stage / "plan.json")
        rounds = [read_json(results / stage / f"round_{r}" / "round.json") for r in range(1, plan["rounds"] + 1)]
        last = rounds[-1]
        grads = [read_json(p) for r in range(1, plan["rounds"] + 1) for v in ("clean", "perturbed")
                 if (p := grads_json(results, stage, r, v)).exists() and last["score"] != "random"]
        row.update(method=last["method"], score=last["score"], ratio=round(last["achieved_ratio"], 4),
                   removed_layers=" ".join(str(i) for i in last["removed_layers_so_far"]),
                   grads_s=round(sum(g["wall_s"] for g in grads), 1),
                   prune_s=round(sum(r["wall_s"] for r in rounds), 1))
    return row


def run(results: Path, stages: list[str]) -> tuple[str, str]:
    rows = [stage_row(results, s) for s in stages]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    tsv = "\t".join(cols) + "\n" + "".join("\t".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows)
    prep, calib = read_json(results / "base" / "model.json"), read_json(results / "calibration" / "calibration.json")
    md = ["# PIP pruning summary", "",
          f"Model `{prep['source']}` ({prep['num_layers']} layers, {prep['params_total'] / 1e6:.2f}M params); "
          f"calibration {calib['n_samples']} × {calib['seq_len']} tokens, achieved edit rate "
          f"{calib['edit_rate']:.3f}. PPL columns are `dataset@chunk length`; removed layers use original indices "
          "in removal order; times are wall seconds.", "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    md += ["", f"Shared steps: prepare_model {prep['wall_s']:.1f} s, calibration {calib['wall_s']:.1f} s.", ""]
    return tsv, "\n".join(md)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--stages", nargs="+", required=True, help="base and the variant stages (unit/method/rRATIO)")
    p.add_argument("--tsv", required=True, type=Path)
    p.add_argument("--md", required=True, type=Path)
    ns = p.parse_args(argv)
    tsv, md = run(ns.results, ns.stages)
    write_text(ns.tsv, tsv)
    write_text(ns.md, md)
    print(md)


if __name__ == "__main__":
    cli.main_wrapper(main)
