"""The statistics behind the generated result pages (bench/results_doc.py): loading the committed result JSONs,
per-method means, the paired comparison of a PIP method with the best non-PIP method of each calibration domain,
and the claim rule.

The claim rule: A beats B only where A wins at least 5 of 6 paired cells (in general ⌈5/6 of the protocol's
domains × seeds⌉) and every cell is present; otherwise there is no clear difference.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from protocol import is_pip

Result = dict[str, Any]


def base_method(method: str) -> str:
    return "random" if method.startswith("random_s") else method


def load_results(results_dir: Path) -> tuple[list[Result], Result | None]:
    """Cell results (stored method names normalised: random_sN → random) and the dense result, if any."""
    results = []
    for p in sorted(q for q in results_dir.glob("*.json") if q.stem != "dense"):
        data = json.loads(p.read_text())
        data["variants"] = {base_method(m): v for m, v in data["variants"].items()}
        results.append(data)
    dense = results_dir / "dense.json"
    return results, (json.loads(dense.read_text()) if dense.exists() else None)


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(statistics.fmean(values), digits)} ± {fmt(statistics.stdev(values), digits)}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}"


def signed(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f}%"


def paired_cells(proto: dict) -> int:
    """How many paired cells a complete block has: calibration domains × seeds."""
    return len(proto["domains"]) * len(proto["seeds"])


def verdict(wins: int, losses: int, n: int, expected: int, a: str, b: str) -> str:
    """The stated claim rule, applied to k wins and l losses out of n paired cells (expected: domains × seeds)."""
    need = math.ceil(expected * 5 / 6)
    if n < expected:
        return f"incomplete ({n} of {expected} paired cells)"
    if wins >= need:
        return f"{a} beats {b}"
    if losses >= need:
        return f"{b} beats {a}"
    return "no clear difference"


def paired(cells: list[Result], pip: str, best: dict[str, str], primary: str) -> tuple[int, int, int, float | None]:
    """(wins, losses, n, mean relative difference pip/base − 1) over the cells holding both the PIP method and its
    domain's best non-PIP method."""
    return paired_with(cells, pip, lambda c: best.get(c["cell"]["domain"]), primary)


def paired_with(cells: list[Result], a: str, other_of, primary: str) -> tuple[int, int, int, float | None]:
    """(wins, losses, n, mean relative difference a/b − 1) of method `a` against b = other_of(cell), over the cells
    holding both."""
    rel, wins, losses = [], 0, 0
    for c in cells:
        v, b = c["variants"], other_of(c)
        if a not in v or b not in v:
            continue
        x, y = v[a]["ppl"][primary], v[b]["ppl"][primary]
        wins, losses = wins + (x < y), losses + (x > y)
        rel.append(x / y - 1)
    return wins, losses, len(rel), (statistics.fmean(rel) if rel else None)


def paired_rows(cells: list[Result], proto: dict, against: dict[str, str]) -> list[dict[str, Any]]:
    """Each method of `against` paired with its other method over the cells holding both: method, base (the other),
    wins, losses, n, rel, verdict."""
    expected, rows = paired_cells(proto), []
    for m, base in against.items():
        w, lo, n, rel = paired_with(cells, m, lambda c: base, proto["eval"]["primary"])
        rows.append({"method": m, "base": base, "wins": w, "losses": lo, "n": n, "rel": rel,
                     "verdict": verdict(w, lo, n, expected, f"`{m}`", f"`{base}`")})
    return rows


def view_comparisons(cells: list[Result], proto: dict) -> list[dict[str, Any]]:
    """Each PIP method on an LLM-made view (NAME@VIEW) against the same method on the rule-based view (NAME)."""
    return paired_rows(cells, proto, {m: m.partition("@")[0] for c in cells for m in c["variants"]
                                      if is_pip(m) and "@" in m})


def noise_comparisons(cells: list[Result], proto: dict) -> list[dict[str, Any]]:
    """Each PIP method (on any view) against the noise control of its base method (BASE-noise_control: the second
    view is a second clean batch instead of a perturbed one): does the perturbed view carry more than gradient
    noise? A noise control on another view is not paired with its own score."""
    present = {m for c in cells for m in c["variants"]}
    control = {m: f"{m.partition('@')[0].partition('-')[0]}-noise_control" for m in dict.fromkeys(
        m for c in cells for m in c["variants"] if is_pip(m))}
    return paired_rows(cells, proto, {m: ctl for m, ctl in control.items()
                                      if ctl in present and m.partition("@")[0] != ctl})


def rerun_agreement(cells: list[Result], others: list[Result], primary: str) -> list[dict[str, Any]]:
    """For each cell that another protocol also ran (same unit, ratio, domain, seed): the methods both ran in their
    own runs, how many gave the same primary PPL, and the largest relative difference (this run / the other − 1)."""
    key = lambda c: (c["cell"]["unit"], float(c["cell"]["ratio"]), c["cell"]["domain"], c["cell"]["seed"])  # noqa: E731
    theirs = {key(o): o for o in others}
    rows = []
    for c in cells:
        o = theirs.get(key(c))
        shared = [m for m in c["variants"] if o and m in o["variants"]]
        if not shared:
            continue
        rel = {m: c["variants"][m]["ppl"][primary] / o["variants"][m]["ppl"][primary] - 1 for m in shared}
        worst = max(shared, key=lambda m: abs(rel[m]))
        rows.append({"cell": c, "other": o, "n": len(shared), "same": sum(r == 0 for r in rel.values()),
                     "worst": worst, "rel": rel[worst]})
    return rows


def best_baselines(cells: list[Result], proto: dict) -> dict[str, str]:
    """The non-PIP method with the lowest mean primary PPL in each calibration domain."""
    primary, best = proto["eval"]["primary"], {}
    methods = list(dict.fromkeys(base_method(m) for c in cells for m in c["variants"] if not is_pip(m)))
    for d in proto["domains"]:
        means = {m: statistics.fmean(vals) for m in methods
                 for vals in [[c["variants"][m]["ppl"][primary] for c in cells
                               if c["cell"]["domain"] == d and m in c["variants"]]] if vals}
        if means:
            best[d] = min(means, key=means.get)
    return best


def comparisons(cells: list[Result], proto: dict) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(best baseline per domain, one paired comparison per PIP method: wins, losses, n, rel, verdict), the PIP
    methods in the order the cells list them."""
    best = best_baselines(cells, proto)
    names = set(best.values())
    other = f"`{next(iter(names))}`" if len(names) == 1 else "the best non-PIP method"
    expected = paired_cells(proto)
    rows = []
    for m in dict.fromkeys(base_method(m) for c in cells for m in c["variants"]):
        if is_pip(m):
            w, lo, n, rel = paired(cells, m, best, proto["eval"]["primary"])
            rows.append({"method": m, "wins": w, "losses": lo, "n": n, "rel": rel, "zs": zero_shot_pair(cells, m, best),
                         "verdict": verdict(w, lo, n, expected, f"`{m}`", other)})
    return best, rows


def zero_shot_pair(cells: list[Result], pip: str, best: dict[str, str]) -> str:
    """Mean zero-shot average (and without BoolQ) of `pip` and of its domain's best baseline over the cells where
    both were evaluated (the protocol evaluates each cell's best PIP variant and best baseline)."""
    pairs = [(v[pip]["zero_shot"], v[best[c["cell"]["domain"]]]["zero_shot"]) for c in cells
             for v in [c["variants"]] if best.get(c["cell"]["domain"]) in v and pip in v
             and v[pip].get("zero_shot") and v[best[c["cell"]["domain"]]].get("zero_shot")]
    if not pairs:
        return "–"
    mean = [pct(statistics.fmean(z[i][k] for z in pairs)) for i in (0, 1) for k in ("avg", "avg_wo_boolq")]
    return f"{mean[0]} / {mean[1]} vs {mean[2]} / {mean[3]} ({len(pairs)} cell{'s' * (len(pairs) > 1)})"
