"""Step: the summary table, dense vs every pruned variant (results/summary.tsv and results/summary.md).

Reads the step outputs by the workflow's path convention under `--results`: the dense model and calibration
metrics, each stage's evaluation, each variant's plan, round JSONs and gradient metrics (for wall times).
`--brief` also writes a short plain-text table (params, removed fraction, perplexities, zero-shot average, decode
speed with the speedup over dense) that the workflow prints on the terminal when a run ends.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps import layout as L
from pipsteps.files import read_json, write_text

log = logging.getLogger("pipsteps.summarize")
TASKS_NOTE = (" zs_ columns are 0-shot lm-eval accuracies: acc_norm for hellaswag, arc_easy, arc_challenge, "
              "openbookqa, piqa, acc for boolq, winogrande; zs_avg is their mean.")
EFFICIENCY_NOTE = (" prefill_ms@bsB / decode_tok_s@bsB / peak_mem_mb: efficiency.json (batch B, median); the dense row "
                   "is the dense model measured in the first variant's job.")


def scoring_records(results: Path, rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of a variant's scoring work: the dense model's gradients its round 1 read (a shared step), the
    gradients later rounds took in their own jobs, and the dense block influence of one-shot block_influence."""
    first, last = rounds[0], rounds[-1]
    if last["score"] == "random":
        return []
    recs = [read_json(p) for v in first.get("views", ()) if (p := results / L.dense_grads(v, "json")).exists()]
    recs += [g for rd in rounds[1:] for g in rd.get("gradients", {}).values()]
    if last["score"] == "block_influence":
        recs.append(read_json(results / L.DENSE / "block_influence.json"))
    return recs


def efficiency_columns(block: dict[str, Any]) -> dict[str, float]:
    """Summary-table columns of one model's block (`dense` or `pruned`) of an efficiency.json."""
    cols: dict[str, float] = {}
    for b, m in block["batches"].items():
        cols[f"prefill_ms@bs{b}"] = round(m["prefill_ms"], 2)
        cols[f"decode_tok_s@bs{b}"] = round(m["decode_tokens_per_s"], 1)
    cols["peak_mem_mb"] = round(block["peak_mem_mb"], 1)
    return cols


def task_columns(results: Path, stage: str) -> dict[str, Any]:
    """Zero-shot columns: zs_<task> = the task's headline accuracy (acc_norm or acc, see tasks.json), zs_avg."""
    zs = read_json(results / L.evaluation(stage, "tasks"))
    cols = {f"zs_{t}": _round(r["headline"]) for t, r in zs["tasks"].items()}
    return cols | {"zs_avg": _round(zs["average"]["value"])}


def kept_compact(kept: list[dict[str, int]] | None) -> str:
    """Width variants: kept query heads/MLP channels per layer in original layer order, a run of n equal layers
    written once as `heads/channels×n` (`4/128×2 2/96`); depth variants: `-`."""
    if not kept:
        return "-"
    runs: list[list] = []
    for k in kept:
        cell = f"{k['heads']}/{k['channels']}"
        if runs and runs[-1][0] == cell:
            runs[-1][1] += 1
        else:
            runs.append([cell, 1])
    return " ".join(cell if n == 1 else f"{cell}×{n}" for cell, n in runs)


def _round(v: float | None) -> float | str:
    return "-" if v is None else round(v, 4)


def stage_row(results: Path, stage: str, with_tasks: bool = False, eff_ref: str | None = None) -> dict[str, Any]:
    ev = read_json(results / L.evaluation(stage))
    row: dict[str, Any] = {"stage": "dense" if stage == L.DENSE else stage, "method": "-", "score": "-",
                           "layers": ev["num_layers"], "params": ev["params_total"],
                           "params_non_emb": ev["params_non_embedding"]}
    for ds, by_len in ev["ppl"].items():
        for length, v in by_len.items():
            row[f"ppl_{ds}@{length}"] = round(v, 3)
    if with_tasks:
        row.update(task_columns(results, stage))
    if eff_ref and not L.is_recovered(stage):  # dense: measured beside the first variant, in the same job
        eff = read_json(results / L.evaluation(eff_ref if stage == L.DENSE else stage, "efficiency"))
        row.update(efficiency_columns(eff["dense" if stage == L.DENSE else "pruned"]))
    row.update({"ratio": 0.0, "removed_layers": "-", "kept_heads/channels": "-", "grads_s": 0.0, "prune_s": 0.0,
                "prune_peak_mb": 0.0, "eval_s": round(ev["wall_s"], 1)})
    if with_tasks:
        row["tasks_s"] = round(read_json(results / L.evaluation(stage, "tasks"))["wall_s"], 1)
    if stage != L.DENSE:  # a recovered stage reports its variant's pruning, plus recovery
        rounds = L.rounds(results, L.variant_of(stage), read_json)
        last = rounds[-1]
        scoring = scoring_records(results, rounds)
        own = sum(g["wall_s"] for rd in rounds for g in rd.get("gradients", {}).values())  # inside the rounds' time
        row.update({"method": last["method"], "score": last["score"], "ratio": round(last["achieved_ratio"], 4),
                    "removed_layers": " ".join(str(i) for i in last["removed_layers_so_far"]) or "-",
                    "kept_heads/channels": kept_compact(last.get("kept")),
                    "grads_s": round(sum(g["wall_s"] for g in scoring), 1),
                    "prune_s": round(sum(r["wall_s"] for r in rounds) - own, 1),
                    "prune_peak_mb": round(max(x.get("peak_mem_mb", 0.0) for x in [*rounds, *scoring]), 1)})
    if L.is_recovered(stage):
        rec = read_json(results / stage / "recovery.json")
        row.update(recover_steps=rec["total_steps"], recover_val_loss=round(rec["best_val_loss"], 4),
                   recover_s=round(rec["wall_s"], 1))
    return row


def run(results: Path, stages: list[str], with_tasks: bool = False,
        with_efficiency: bool = False) -> tuple[str, str]:
    eff_ref = next((s for s in stages if s != L.DENSE and not L.is_recovered(s)), None) if with_efficiency else None
    rows = [stage_row(results, s, with_tasks, eff_ref) for s in stages]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    tsv = "\t".join(cols) + "\n" + "".join("\t".join(str(r.get(c, "")) for c in cols) + "\n" for r in rows)
    prep, calib = read_json(results / L.DENSE / "model.json"), read_json(results / "calibration" / "calibration.json")
    md = ["# PIP pruning summary", "",
          f"Model `{prep['source']}` ({prep['num_layers']} layers, {prep['params_total'] / 1e6:.2f}M params); "
          f"calibration {calib['n_samples']} × {calib['seq_len']} tokens, achieved edit rate "
          f"{calib['edit_rate']:.3f}. PPL columns are `dataset@chunk length`; removed layers use original indices "
          "in removal order; kept_heads/channels lists the kept query heads/MLP channels per layer of width variants "
          "(×n = n equal layers in a row); grads_s is the scoring steps (gradients, or block influence), the "
          "shared dense step counted in every variant that uses it; times are wall seconds, prune_peak_mb the "
          "largest peak memory of the variant's pruning and scoring jobs." + (TASKS_NOTE if with_tasks else "")
          + (EFFICIENCY_NOTE if eff_ref else ""), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    md += ["", f"Shared steps: prepare_model {prep['wall_s']:.1f} s, calibration {calib['wall_s']:.1f} s.", ""]
    return tsv, "\n".join(md)


def brief(tsv: str, md_path: str = "results/summary.md") -> str:
    """The short terminal table of a summary.tsv text: one line per stage, aligned columns."""
    lines = [line.split("\t") for line in tsv.splitlines() if line]
    head, rows = lines[0], [dict(zip(lines[0], r)) for r in lines[1:]]
    decode = next((c for c in head if c.startswith("decode_tok_s@")), None)
    cols = [("stage", "stage"), ("params", "params"), ("ratio", "removed")]
    cols += [(c, "ppl " + c.removeprefix("ppl_")) for c in head if c.startswith("ppl_")]
    cols += [("zs_avg", "zero-shot avg")] if "zs_avg" in head else []
    cols += [(decode, "decode tok/s " + decode.split("@")[1])] if decode else []
    dense = next((r for r in rows if r["stage"] == "dense"), {})

    def cell(r: dict[str, str], c: str) -> str:
        v = r.get(c, "")
        if c == "params" and v.isdigit():
            return f"{int(v) / 1e6:.2f}M"
        if c == "ratio":
            return "-" if r["stage"] == "dense" else f"{float(v):.1%}"
        if c == decode and v not in ("", "-") and r["stage"] != "dense" and dense.get(c, "") not in ("", "-"):
            return f"{v} ({float(v) / float(dense[c]):.2f}x)"
        return v or "-"

    table = [[name for _, name in cols]] + [[cell(r, c) for c, _ in cols] for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(len(cols))]
    text = ["  ".join(t[i].ljust(w) if i == 0 else t[i].rjust(w) for i, w in enumerate(widths)) for t in table]
    n = sum(r["stage"] != "dense" for r in rows)
    return "\n".join([f"PIP summary: dense vs {n} pruned variant{'s' * (n != 1)}", "", *text, "",
                      f"Full table: {md_path} (and .tsv). Plots: results/plots/. "
                      "HTML report: snakemake --report report.html", ""])


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--stages", nargs="+", required=True, help="base and the variant stages (unit/method/rRATIO)")
    p.add_argument("--with-tasks", action="store_true", help="add the zero-shot columns (results/STAGE/eval/tasks.json)")
    p.add_argument("--with-efficiency", action="store_true",
                   help="add the latency / throughput / memory columns (results/VARIANT/eval/efficiency.json)")
    p.add_argument("--tsv", required=True, type=Path)
    p.add_argument("--md", required=True, type=Path)
    p.add_argument("--brief", type=Path, default=None, help="output short plain-text table (printed at the run's end)")
    ns = p.parse_args(argv)
    tsv, md = run(ns.results, ns.stages, ns.with_tasks, ns.with_efficiency)
    write_text(ns.tsv, tsv)
    write_text(ns.md, md)
    if ns.brief:
        write_text(ns.brief, brief(tsv, str(ns.md)))
    print(md)


if __name__ == "__main__":
    cli.main_wrapper(main)
