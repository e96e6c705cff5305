"""Width-score pictures: every KV group's and MLP channel's score per layer and round, for each scored width variant.

Reads what the prune rounds already store in their round JSONs: `group_scores` (per current layer, the scores of
its KV groups and MLP channels at their current positions), `removed_groups` (original indices, keyed by original
layer) and `layer_scores` (current → original layer index). A width round never removes a layer, and the kept
groups of a layer stay in ascending original order, so replaying the removals from the dense shapes (round 1)
maps every current position back to its original group.

`figure` draws three stacked panels per variant, sharing the original-layer axis:
  KV groups      one row per round and original KV group, colour = score, x = removed in that round, blank = gone
  MLP removed    per round, colour = fraction of the layer's channels removed so far, number = removed in the round
  MLP scores     per round, the median channel score per layer with its 10-90 % band; the dashed line is the
                 highest score removed in that round (the cut); grey = protected layers (scored, never pruned)
`rows` gives the same numbers as a table (width_scores.tsv). Random removal has no scores and is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from pipsteps.errors import PipError  # noqa: E402

UNSCORED = "random"
KINDS = (("attn", "kv_heads"), ("mlp", "channels"))  # group_scores key, removed_groups key


@dataclass(frozen=True)
class LayerRound:
    """One layer in one round: each kind's groups (original indices, before the round), scores and removals."""
    round: int
    layer: int  # original index
    groups: dict[str, list[int]]
    scores: dict[str, np.ndarray]
    removed: dict[str, np.ndarray]  # bool, aligned with groups


def is_scored_width(rounds: list[dict[str, Any]]) -> bool:
    return bool(rounds) and "group_scores" in rounds[0] and rounds[0]["score"] != UNSCORED


def replay(rounds: list[dict[str, Any]]) -> list[LayerRound]:
    """Every (round, layer) of a width variant with its groups in original indices (see the module docstring)."""
    first = rounds[0]
    kept = {kind: {s["orig_index"]: list(range(len(first["group_scores"][kind][s["index"]])))
                   for s in first["layer_scores"]} for kind, _ in KINDS}
    out = []
    for rd in rounds:
        for s in rd["layer_scores"]:
            i, o = s["index"], s["orig_index"]
            groups, scores, removed = {}, {}, {}
            for kind, key in KINDS:
                groups[kind] = kept[kind][o]
                scores[kind] = np.asarray(rd["group_scores"][kind][i], dtype=float)
                gone = set(rd["removed_groups"][key].get(str(o), ()))
                removed[kind] = np.array([g in gone for g in groups[kind]], dtype=bool)
                if len(scores[kind]) != len(groups[kind]) or removed[kind].sum() != len(gone):
                    raise PipError(f"round {rd['round']}, layer {o}: {len(scores[kind])} {kind} scores for "
                                   f"{len(groups[kind])} kept groups (removed {sorted(gone)}): the round JSONs do "
                                   "not follow each other")
            out.append(LayerRound(rd["round"], o, groups, scores, removed))
            for kind, _ in KINDS:
                kept[kind][o] = [g for g, r in zip(groups[kind], removed[kind]) if not r]
    return out


def _quantiles(x: np.ndarray) -> tuple[float, float, float]:
    p10, p50, p90 = np.quantile(x, [0.1, 0.5, 0.9]) if x.size else (np.nan,) * 3
    return float(p10), float(p50), float(p90)


def rows(variant: str, rounds: list[dict[str, Any]], candidates: list[int]) -> list[dict[str, Any]]:
    """One row per round and layer: KV group scores (original group order) and channel score summaries."""
    out = []
    for lr in replay(rounds):
        ch, ch_rm = lr.scores["mlp"], lr.removed["mlp"]
        p10, p50, p90 = _quantiles(ch)
        out.append({"variant": variant, "score": rounds[0]["score"], "round": lr.round, "layer": lr.layer,
                    "protected": int(lr.layer not in candidates), "kv_groups": len(lr.groups["attn"]),
                    "kv_removed": " ".join(str(g) for g, r in zip(lr.groups["attn"], lr.removed["attn"]) if r) or "-",
                    "kv_scores": " ".join(f"{g}:{s:.4g}" for g, s in zip(lr.groups["attn"], lr.scores["attn"])),
                    "channels": len(ch), "channels_removed": int(ch_rm.sum()),
                    "ch_p10": f"{p10:.4g}", "ch_median": f"{p50:.4g}", "ch_p90": f"{p90:.4g}",
                    "ch_max_removed": f"{ch[ch_rm].max():.4g}" if ch_rm.any() else "-"})
    return out


def tsv(table: list[dict[str, Any]]) -> str:
    cols = list(table[0]) if table else ["variant", "score", "round", "layer"]
    return "\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in table)


def _norm(m: np.ndarray) -> LogNorm | None:
    finite = m[np.isfinite(m)]
    return LogNorm() if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20 else None


def _colorbar(fig: plt.Figure, ax: plt.Axes, img: Any, label: str) -> None:
    """A colour bar in an inset beside the axes, so that the stacked panels keep one x-axis width."""
    fig.colorbar(img, cax=ax.inset_axes((1.01, 0.0, 0.012, 1.0))).set_label(label, fontsize=7)


def _protected(ax: plt.Axes, n_layers: int, candidates: list[int]) -> None:
    for o in range(n_layers):
        if o not in candidates:
            ax.axvspan(o - 0.5, o + 0.5, color="0.9", zorder=0)


def _kv_panel(fig: plt.Figure, ax: plt.Axes, v: str, score: str, lrs: list[LayerRound], n_layers: int,
              n_rounds: int) -> None:
    n_kv = max(max(lr.groups["attn"], default=0) for lr in lrs) + 1
    m = np.full((n_rounds * n_kv, n_layers), np.nan)
    for lr in lrs:
        for g, s, r in zip(lr.groups["attn"], lr.scores["attn"], lr.removed["attn"]):
            m[(lr.round - 1) * n_kv + g, lr.layer] = s
            if r:
                ax.plot(lr.layer, (lr.round - 1) * n_kv + g, "rx", markersize=7, markeredgewidth=2)
    img = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="viridis", interpolation="nearest", norm=_norm(m),
                    extent=(-0.5, n_layers - 0.5, n_rounds * n_kv - 0.5, -0.5))
    for r in range(1, n_rounds):
        ax.axhline(r * n_kv - 0.5, color="white", linewidth=1.5)
    step = max(1, n_rounds * n_kv // 24)
    ax.set_yticks(range(0, n_rounds * n_kv, step),
                  [f"r{y // n_kv + 1} g{y % n_kv}" for y in range(0, n_rounds * n_kv, step)], fontsize=6)
    ax.set_title(f"{v}: {score} of every KV group per round (x = removed in that round, blank = gone)", fontsize=9)
    _colorbar(fig, ax, img, score)


def _mlp_removed_panel(fig: plt.Figure, ax: plt.Axes, v: str, lrs: list[LayerRound], n_layers: int,
                       n_rounds: int) -> None:
    frac, count = np.full((n_rounds, n_layers), np.nan), np.zeros((n_rounds, n_layers), dtype=int)
    dense = {lr.layer: len(lr.groups["mlp"]) for lr in lrs if lr.round == 1}
    for lr in lrs:
        count[lr.round - 1, lr.layer] = lr.removed["mlp"].sum()
        frac[lr.round - 1, lr.layer] = 1 - (len(lr.groups["mlp"]) - lr.removed["mlp"].sum()) / dense[lr.layer]
    vmax = max(0.05, float(np.nanmax(frac, initial=0.0)))
    img = ax.imshow(frac, aspect="auto", cmap="Reds", interpolation="nearest", vmin=0, vmax=vmax,
                    extent=(-0.5, n_layers - 0.5, n_rounds + 0.5, 0.5))
    if n_layers <= 40:
        for (r, o), c in np.ndenumerate(count):
            if c:
                ax.text(o, r + 1, str(c), ha="center", va="center", fontsize=6,
                        color="white" if frac[r, o] > 0.6 * vmax else "black")
    ax.set_yticks(range(1, n_rounds + 1))
    ax.set_ylabel("round", fontsize=8)
    ax.set_title(f"{v}: MLP channels removed (colour = fraction of the layer's channels gone after the round, "
                 "number = removed in the round)", fontsize=9)
    _colorbar(fig, ax, img, "removed fraction")


def _mlp_scores_panel(ax: plt.Axes, v: str, score: str, lrs: list[LayerRound], n_layers: int, n_rounds: int,
                      candidates: list[int]) -> None:
    _protected(ax, n_layers, candidates)
    lows = []
    for r in range(1, n_rounds + 1):
        this = sorted((lr for lr in lrs if lr.round == r), key=lambda lr: lr.layer)
        q = np.array([_quantiles(lr.scores["mlp"]) for lr in this])
        xs = [lr.layer for lr in this]
        ax.fill_between(xs, q[:, 0], q[:, 2], color=f"C{r - 1}", alpha=0.15, linewidth=0)
        ax.plot(xs, q[:, 1], "-o", color=f"C{r - 1}", markersize=3, label=f"round {r}")
        cut = [lr.scores["mlp"][lr.removed["mlp"]].max() for lr in this if lr.removed["mlp"].any()]
        if cut:
            ax.axhline(max(cut), color=f"C{r - 1}", linestyle="--", linewidth=0.8)
        lows.append(q[:, 0].min())
    if min(lows) > 0:
        ax.set_yscale("log")
    ax.set_ylabel(score, fontsize=8)
    ax.legend(fontsize=6, ncol=min(n_rounds, 4), loc="best")
    ax.set_title(f"{v}: MLP channel {score} per layer (median, band = 10-90 %, dashed = highest score removed "
                 "in the round, grey = protected)", fontsize=9)


def figure(data: dict[str, list[dict[str, Any]]], n_layers: int,
           candidates: dict[str, list[int]]) -> plt.Figure:
    """Three stacked panels per scored width variant of `data` ({variant: its round JSONs}); one text panel when
    the run has none."""
    scored = {v: rds for v, rds in data.items() if is_scored_width(rds)}
    n_kv = {v: len(rds[0]["group_scores"]["attn"][0]) if rds[0]["group_scores"]["attn"] else 1
            for v, rds in scored.items()}
    heights = [h for v, rds in scored.items()
               for h in (0.14 * len(rds) * n_kv[v] + 1.0, 0.3 * len(rds) + 1.0, 2.2)] or [1.0]
    fig, axes = plt.subplots(len(heights), 1, figsize=(max(7.0, 0.3 * n_layers + 3.0), sum(heights) + 0.5),
                             gridspec_kw={"height_ratios": heights}, squeeze=False, sharex=True, layout="constrained")
    if not scored:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no width variant with scores in this run (random removal has none)", ha="center")
        return fig
    for k, (v, rds) in enumerate(scored.items()):
        lrs, score = replay(rds), rds[0]["score"]
        kv_ax, rm_ax, sc_ax = axes[3 * k: 3 * k + 3, 0]
        _kv_panel(fig, kv_ax, v, score, lrs, n_layers, len(rds))
        _mlp_removed_panel(fig, rm_ax, v, lrs, n_layers, len(rds))
        _mlp_scores_panel(sc_ax, v, score, lrs, n_layers, len(rds), candidates.get(v, list(range(n_layers))))
    axes[-1, 0].set_xticks(range(0, n_layers, max(1, n_layers // 30)))
    axes[-1, 0].set_xlim(-0.5, n_layers - 0.5)
    axes[-1, 0].set_xlabel("original layer index")
    return fig
