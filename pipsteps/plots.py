"""Step: PNG plots of a finished run (results/plots/*.png), for the HTML report (`snakemake --report`).

`results` draws, from the step outputs under `--results`:
  layer_scores.png     depth variants with scores: a heatmap of the layer scores (PertImport for PIP) per round and
                       original layer index; the layer(s) removed in each round are crossed, removed layers are blank
  width_scores.png     width variants with scores: every KV group's and the MLP channels' scores per layer and round
                       (pipsteps.plots_width), with the same numbers in width_scores.tsv
  removed_layers.png   per variant, which original layers were removed and in which round (blank = kept)
  metric_vs_ratio.png  every PPL column (and the zero-shot average) of summary.tsv against the target ratio, one
                       line per method (dense at ratio 0), LoRA-recovered variants dashed
`latency` draws latency.png from the variants' efficiency.json: prefill latency, decode tokens/s and peak memory,
dense vs each pruned variant per batch size, with the speedup over the dense model measured in the same job.
`results` also writes summary.tsv as an HTML table fragment (--table), which the report shows and embeds.
Stage names are parsed with the method registry's wildcard pattern (pipsteps.methods).
"""

from __future__ import annotations

import argparse
import csv
import html
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from pipsteps import cli, methods, plots_width  # noqa: E402
from pipsteps import layout as L  # noqa: E402
from pipsteps.errors import PipError  # noqa: E402
from pipsteps.files import atomic_path, read_json, write_text  # noqa: E402

log = logging.getLogger("pipsteps.plots")


@dataclass(frozen=True)
class PlotConfig:
    dpi: int = field(default=120, metadata={"help": "PNG resolution (dots per inch)"})


def save(fig: plt.Figure, path: Path, cfg: PlotConfig) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=cfg.dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    log.info("wrote %s", path)


def read_rounds(results: Path, variant: str) -> list[dict[str, Any]]:
    return L.rounds(results, variant, read_json)


def score_matrix(rounds: list[dict[str, Any]], n_layers: int) -> tuple[np.ndarray, list[list[int]]]:
    """(rounds × original layers) scores, NaN where a layer is gone or unscored; the layers removed per round."""
    m = np.full((len(rounds), n_layers), np.nan)
    for r, rd in enumerate(rounds):
        for s in rd["layer_scores"]:
            if s["score"] is not None:
                m[r, s["orig_index"]] = s["score"]
    return m, [[x["orig_index"] for x in rd["removed"]] for rd in rounds]


def plot_layer_scores(results: Path, variants: list[str], n_layers: int, out: Path, cfg: PlotConfig) -> None:
    data = {v: read_rounds(results, v) for v in variants}
    scored = {v: rds for v, rds in data.items()
              if "group_scores" not in rds[0] and any(s["score"] is not None for s in rds[0]["layer_scores"])}
    heights = [max(1.2, 0.35 * len(rds) + 0.9) for rds in scored.values()] or [1.5]
    fig, axes = plt.subplots(len(heights), 1, figsize=(max(6.0, 0.28 * n_layers + 2.5), sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, sharex=True, layout="constrained")
    if not scored:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no depth variant with layer scores in this run (random removal has none)",
                        ha="center")
    for ax, (v, rds) in zip(axes[:, 0], scored.items()):
        m, removed = score_matrix(rds, n_layers)
        finite = m[np.isfinite(m)]
        log_scale = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 20
        img = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="viridis", interpolation="nearest",
                        norm=LogNorm() if log_scale else None,
                        extent=(-0.5, n_layers - 0.5, len(rds) + 0.5, 0.5))
        for r, layers in enumerate(removed, start=1):
            ax.plot(layers, [r] * len(layers), "rx", markersize=8, markeredgewidth=2)
        ax.set_title(f"{v}: {rds[0]['score']} per layer and round (x = removed in that round)", fontsize=9)
        ax.set_ylabel("round")
        ax.set_yticks(range(1, len(rds) + 1))
        ax.set_xticks(range(0, n_layers, max(1, n_layers // 15)))
        fig.colorbar(img, ax=ax, pad=0.01).set_label(rds[0]["score"], fontsize=8)
    axes[-1, 0].set_xlabel("original layer index")
    save(fig, out, cfg)


def plot_width_scores(results: Path, variants: list[str], n_layers: int, out: Path, data_out: Path,
                      cfg: PlotConfig) -> None:
    """width_scores.png and width_scores.tsv of the scored width variants (pipsteps.plots_width)."""
    data = {v: read_rounds(results, v) for v in variants}
    scored = {v: rds for v, rds in data.items() if plots_width.is_scored_width(rds)}
    candidates = {v: read_json(results / L.plan(v))["candidates"] for v in scored}
    table = [row for v, rds in scored.items() for row in plots_width.rows(v, rds, candidates[v])]
    save(plots_width.figure(scored, n_layers, candidates), out, cfg)
    write_text(data_out, plots_width.tsv(table))


def _heat(ax: plt.Axes, m: np.ndarray, labels: list[str], text: np.ndarray, title: str, **kw: Any) -> None:
    """A variants × original-layers heatmap with a number in every filled cell."""
    n_layers = m.shape[1]
    ax.imshow(np.ma.masked_invalid(m), aspect="auto", interpolation="nearest", **kw)
    for (i, j), t in np.ndenumerate(text):
        if t:
            ax.text(j, i, t, ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(0, n_layers, max(1, n_layers // 30)))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xticks(np.arange(-0.5, n_layers), minor=True)
    ax.grid(which="minor", axis="x", color="0.85", linewidth=0.5)
    ax.set_title(title, fontsize=9)


def plot_removed_layers(results: Path, variants: list[str], n_layers: int, out: Path, cfg: PlotConfig) -> None:
    """Depth variants: the round that removed each layer. Width variants: kept KV groups / MLP channels per layer."""
    last = {v: read_rounds(results, v) for v in variants}
    depth = [v for v, rds in last.items() if "kept" not in rds[-1]]
    width = [v for v, rds in last.items() if "kept" in rds[-1]]
    panels = ([("depth", depth)] if depth else []) + ([("kv", width), ("mlp", width)] if width else [])
    heights = [0.45 * len(vs) + 0.9 for _, vs in panels] or [1.0]
    fig, axes = plt.subplots(len(heights), 1, figsize=(max(6.0, 0.3 * n_layers + 3.0), sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, sharex=True, layout="constrained")
    for ax, (kind, vs) in zip(axes[:, 0], panels):
        if kind == "depth":
            order = np.full((len(vs), n_layers), np.nan)
            for i, v in enumerate(vs):
                for rd in last[v]:
                    for x in rd["removed"]:
                        order[i, x["orig_index"]] = rd["round"]
            text = np.where(np.isfinite(order), np.nan_to_num(order).astype(int).astype(str), "")
            kept = [int(np.isnan(row).sum()) for row in order]
            _heat(ax, order, [f"{v} ({k}/{n_layers} kept)" for v, k in zip(vs, kept)], text,
                  "removed layers: number = round of removal, blank = kept", cmap="YlOrRd", vmin=0,
                  vmax=float(np.nanmax(order, initial=1.0)) * 1.2)
            continue
        dense = read_json(results / L.model(L.DENSE) / "config.json")
        full = (dense.get("num_key_value_heads") or dense["num_attention_heads"]) if kind == "kv" \
            else dense["intermediate_size"]
        frac = np.full((len(vs), n_layers), np.nan)
        text = np.full((len(vs), n_layers), "", dtype=object)
        for i, v in enumerate(vs):
            for layer in last[v][-1]["kept"]:
                count = layer["kv_heads"] if kind == "kv" else layer["channels"]
                frac[i, layer["orig_index"]] = count / full
                text[i, layer["orig_index"]] = str(count)
        what = f"KV groups of {full}" if kind == "kv" else f"MLP channels of {full}"
        _heat(ax, frac, vs, text, f"width: kept {what} per layer (colour = kept fraction, blank = layer removed)",
              cmap="Greens", vmin=0, vmax=1)
    if not panels:
        axes[0, 0].axis("off")
    axes[-1, 0].set_xlabel("original layer index")
    save(fig, out, cfg)


def read_summary(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except FileNotFoundError:
        raise PipError(f"missing file: {path}") from None


def _num(s: str | None) -> float:
    try:
        return float(s) if s not in (None, "", "-") else math.nan
    except ValueError:
        return math.nan


def stage_parts(stage: str) -> tuple[str, str, float, bool] | None:
    """(unit, method wildcard, ratio, recovered) of a variant stage unit/method/rRATIO[/recovered], with the
    method matched by the registry's wildcard pattern; None for any other row (dense)."""
    m = re.fullmatch(rf"([a-z]+)/({methods.WILDCARD_RE})/r([0-9.e+-]+)(/{L.RECOVERED})?", stage)
    if not m:
        return None
    return m.group(1), m.group(2), float(m.group(3)), bool(m.group(4))


def series_name(stage: str) -> str | None:
    """The metric_vs_ratio line of a stage: unit/method (random seeds pooled), `(recovered)` for LoRA rows."""
    parts = stage_parts(stage)
    if parts is None:
        return None
    unit, method, _, recovered = parts
    base, _, seed = methods.parse(method)
    return f"{unit}/{base if seed is not None else method}" + (" (recovered)" if recovered else "")


def plot_metric_vs_ratio(summary: Path, out: Path, cfg: PlotConfig) -> None:
    save(metric_vs_ratio_figure(summary), out, cfg)


def metric_vs_ratio_figure(summary: Path) -> plt.Figure:
    """One line per unit/method (random seeds pooled: mean, with min-max bars), from the dense model at ratio 0."""
    rows = read_summary(summary)
    dense = next((r for r in rows if r["stage"] == "dense"), None)
    metrics = [c for c in rows[0] if c.startswith("ppl_")] + [c for c in rows[0] if c == "zs_avg"] if rows else []
    if dense is None or not metrics:
        raise PipError(f"{summary}: needs a dense row and ppl_ columns")
    series: dict[str, dict[float, list[dict[str, str]]]] = {}
    for r in rows:
        name = series_name(r["stage"])
        if name is None and r["stage"] != "dense":
            raise PipError(f"{summary}: stage {r['stage']!r} is not unit/method/rRATIO[/recovered]")
        if name is not None:
            series.setdefault(name, {}).setdefault(stage_parts(r["stage"])[2], []).append(r)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for ax, col in zip(axes[0], metrics):
        d = _num(dense[col])
        for name, by_ratio in sorted(series.items()):
            xs = [0.0, *sorted(by_ratio)]
            vals = [[d]] + [[_num(r[col]) for r in by_ratio[x]] for x in xs[1:]]
            ys = np.array([np.mean(v) for v in vals])
            err = np.array([[y - min(v), max(v) - y] for y, v in zip(ys, vals)]).T
            ax.errorbar(xs, ys, yerr=err if err.any() else None, fmt="--o" if "recovered" in name else "-o",
                        label=name, markersize=5, capsize=3)
        ax.axhline(d, color="0.6", linewidth=0.8, linestyle=":", label="dense")
        values = [y for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(y) and y > 0]
        if col.startswith("ppl_") and values and max(values) / min(values) > 10:
            ax.set_yscale("log")  # pruned PPL can be orders of magnitude above dense
        ax.set_xlabel("target ratio (fraction of parameters removed)")
        ax.set_title(col, fontsize=9)
    axes[0, 0].legend(fontsize=7)
    return fig


def table_html(summary: Path) -> str:
    """summary.tsv as an HTML table fragment with its own scoped style (shown standalone and inside the report)."""
    rows = read_summary(summary)
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c] or '')}</td>" for c in cols) + "</tr>\n" for r in rows)
    style = ("<style>table.pip-summary{border-collapse:collapse;font:12px sans-serif}"
             "table.pip-summary th,table.pip-summary td{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "table.pip-summary td:first-child{text-align:left}</style>")
    return f'{style}\n<table class="pip-summary">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n'


def plot_latency(effs: dict[str, dict[str, Any]], out: Path, cfg: PlotConfig) -> None:
    """Grouped bars per batch size: dense (first variant's job), then each variant with its speedup."""
    first = next(iter(effs.values()))
    batches = list(first["dense"]["batches"])
    models = [("dense", first["dense"], None)] + [(v, e["pruned"], e) for v, e in effs.items()]
    panels = [("prefill latency (ms)", "prefill_ms", "prefill"), ("decode tokens/s", "decode_tokens_per_s", "decode")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    width = 0.8 / len(models)
    x = np.arange(len(batches))
    for ax, (title, key, sp) in zip(axes, panels):
        for i, (name, block, eff) in enumerate(models):
            vals = [block["batches"][b][key] for b in batches]
            bars = ax.bar(x + i * width, vals, width, label=name)
            if eff is not None:
                for bar, b in zip(bars, batches):
                    ax.annotate(f"{eff['speedup'][b][sp]:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x + width * (len(models) - 1) / 2, [f"batch {b}" for b in batches])
        ax.set_title(title, fontsize=9)
    mem = [block["peak_mem_mb"] for _, block, _ in models]
    axes[2].bar(range(len(models)), mem, color=[f"C{i}" for i in range(len(models))])
    axes[2].set_xticks(range(len(models)), [m[0] for m in models], rotation=20, fontsize=7, ha="right")
    axes[2].set_title(f"peak memory (MB, {first['dense']['mem_kind']})", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"dense vs pruned on {first['device']} ({first['dtype']}, {first['threads']} threads); "
                 "speedup vs the dense model measured in the same job", fontsize=9)
    save(fig, out, cfg)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    res = sub.add_parser("results", help="layer scores, removed layers, metric vs ratio")
    cli.add_dataclass_args(res, PlotConfig)
    res.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    res.add_argument("--variants", nargs="+", required=True, help="variant stages unit/method/rRATIO")
    res.add_argument("--summary", type=Path, required=True, help="summary.tsv")
    res.add_argument("--table", type=Path, required=True, help="output HTML table of summary.tsv")
    for name in ("removed-layers", "metric-vs-ratio"):
        res.add_argument(f"--{name}", type=Path, required=True, help=f"output {name} PNG")
    res.add_argument("--layer-scores", type=Path, help="output layer scores PNG (runs with scored depth variants)")
    res.add_argument("--width-scores", type=Path, help="output width scores PNG (runs with scored width variants)")
    res.add_argument("--width-data", type=Path, help="output width scores TSV (with --width-scores)")
    lat = sub.add_parser("latency", help="dense vs pruned latency, throughput and memory")
    cli.add_dataclass_args(lat, PlotConfig)
    lat.add_argument("--efficiency", nargs="+", type=Path, required=True, help="efficiency.json of each variant")
    lat.add_argument("--out", type=Path, required=True, help="output PNG")
    ns = p.parse_args(argv)
    cfg = PlotConfig(dpi=ns.dpi)
    if ns.what == "results":
        n_layers = read_json(ns.results / L.DENSE / "model.json")["num_layers"]
        plot_metric_vs_ratio(ns.summary, ns.metric_vs_ratio, cfg)
        if ns.layer_scores:
            plot_layer_scores(ns.results, ns.variants, n_layers, ns.layer_scores, cfg)
        if ns.width_scores:
            plot_width_scores(ns.results, ns.variants, n_layers, ns.width_scores,
                              ns.width_data or ns.width_scores.with_suffix(".tsv"), cfg)
        plot_removed_layers(ns.results, ns.variants, n_layers, ns.removed_layers, cfg)
        write_text(ns.table, table_html(ns.summary))
    else:
        effs = {(e := read_json(f))["stage"] or str(f): e for f in ns.efficiency}
        plot_latency(effs, ns.out, cfg)


if __name__ == "__main__":
    cli.main_wrapper(main)
