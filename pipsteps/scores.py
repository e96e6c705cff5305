"""Per-layer importance scores for depth pruning (docs/methods.md). Lowest score = pruned first.

With D = G_clean − G_perturbed summed over all parameters of decoder layer i:

    norm_diff    ‖D_i‖₂                                   (PIP, literal reading: PertImport)
    rel_diff     ‖D_i‖₂ / ‖G_clean,i‖₂
    cos_diff     1 − cos(G_clean,i, G_perturbed,i)
    taylor_diff  Σ |W_i ⊙ D_i|
    fisher_diff  Σ (W_i ⊙ D_i)²                           (Fisher-style squared difference)
    noise_control  ‖G_clean,i − G_control,i‖₂              (control: a second clean batch in place of the
                                                          perturbed view; does the perturbation add signal?)
    fisher_ps    Σ W_i² ⊙ S_i,  S = mean_r (g_clean,⌊r/k⌋ − g_pert,r)²  (per-sample squared difference: the
                                                          psdiff gradient file of pipsteps.gradients)
    taylor       Σ |W_i ⊙ G_clean,i|                      (LLM-Pruner Element¹, clean view only)
    taylor_sq    Σ (W_i ⊙ G_clean,i)²                     (squared first-order term, clean view only)
    magnitude    ‖W_i‖₂

Every gradient score is computed from one streaming pass over two cached gradient files (`layer_stats`).
The forward-only scores read the calibration losses of the model with layer i skipped (pipsteps.ablation):
with Lc = L(M, s), Lp = L(M, s̃), lc_i = L(M∖i, s), lp_i = L(M∖i, s̃) and gap = Lp − Lc,

    sleb          lc_i                                    (SLEB: the smallest clean loss after removal)
    gap_ablation  |(lp_i − lc_i) − gap|                   (the removal that least changes the views' loss gap)
    pip_greedy    (lc_i − Lc) + (lp_i − Lp)               (loss increase on both views: perturbation-aware SLEB)
    gap_greedy    (lc_i − Lc) + |(lp_i − lc_i) − gap|     (clean loss increase + gap change)
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from pipsteps.grads import layer_of
from pipsteps.io import grad_tensor, open_safetensors

Stats = dict[str, float]
DEPTH_SCORES: dict[str, Callable[[Stats], float]] = {
    "norm_diff": lambda s: math.sqrt(s["dd"]),
    "rel_diff": lambda s: math.sqrt(s["dd"]) / max(math.sqrt(s["cc"]), 1e-30),
    "cos_diff": lambda s: 1.0 - s["cp"] / max(math.sqrt(s["cc"] * s["pp"]), 1e-30),
    "taylor_diff": lambda s: s["wd"],
    "fisher_diff": lambda s: s["wd2"],
    "noise_control": lambda s: math.sqrt(s["dd"]),  # layer_stats(model, clean, control)
    "fisher_ps": lambda s: s["wps"],  # layer_stats(model, None, psdiff)
    "taylor": lambda s: s["wc"],
    "taylor_sq": lambda s: s["wc2"],
    "magnitude": lambda s: math.sqrt(s["ww"]),
}
ABLATION_SCORES: dict[str, Callable[[float, float, float, float], float]] = {  # (Lc, Lp, lc_i, lp_i)
    "sleb": lambda Lc, Lp, lc, lp: lc,
    "gap_ablation": lambda Lc, Lp, lc, lp: abs((lp - lc) - (Lp - Lc)),
    "pip_greedy": lambda Lc, Lp, lc, lp: (lc - Lc) + (lp - Lp),
    "gap_greedy": lambda Lc, Lp, lc, lp: (lc - Lc) + abs((lp - lc) - (Lp - Lc)),
}


def _sum(x: torch.Tensor) -> float:
    return float(x.sum(dtype=torch.float64))  # fp32 products, fp64 accumulation


def layer_stats(model: torch.nn.Module, clean: Path | None, perturbed: Path | None) -> dict[int, Stats]:
    """Per-layer sums of the products every score needs: dd=ΣD², cc=ΣGc², pp=ΣGp², cp=ΣGc·Gp,
    wd=Σ|W·D|, wd2=Σ(W·D)², wc=Σ|W·Gc|, wc2=Σ(W·Gc)², ww=ΣW²; with no clean file, `perturbed` is the per-sample
    statistic S (psdiff) and wps=ΣW²·S."""
    stats: dict[int, Stats] = defaultdict(lambda: defaultdict(float))
    weights = {n: p.detach() for n, p in model.named_parameters() if layer_of(n) is not None}
    fc = open_safetensors(clean) if clean else None
    fp = open_safetensors(perturbed) if perturbed else None
    for name, w in weights.items():
        s, w = stats[layer_of(name)], w.float()
        s["ww"] += _sum(w * w)
        if fc is None:
            if fp is not None:  # the psdiff file: S = mean_r (g_clean,⌊r/k⌋ − g_pert,r)², elementwise
                s["wps"] += _sum(w * w * grad_tensor(fp, perturbed, name, w.shape))
            continue
        gc = grad_tensor(fc, clean, name, w.shape)
        s["cc"] += _sum(gc * gc)
        wgc = w * gc
        s["wc"] += _sum(wgc.abs())
        s["wc2"] += _sum(wgc * wgc)
        if fp is not None:
            gp = grad_tensor(fp, perturbed, name, w.shape)
            d = gc - gp
            s["pp"] += _sum(gp * gp)
            s["cp"] += _sum(gc * gp)
            s["dd"] += _sum(d * d)
            wd = w * d
            s["wd"] += _sum(wd.abs())
            s["wd2"] += _sum(wd * wd)
    return {i: dict(s) for i, s in sorted(stats.items())}


def depth_scores(score: str, stats: dict[int, Stats]) -> list[float]:
    if score not in DEPTH_SCORES:
        raise ValueError(f"unknown depth score {score!r}; allowed: {', '.join(DEPTH_SCORES)}")
    return [DEPTH_SCORES[score](stats[i]) for i in sorted(stats)]


def ablation_scores(score: str, full: dict[str, float], skipped: dict[str, dict[int, float]], n_layers: int
                    ) -> list[float | None]:
    """Per-layer forward-only scores from the views' full losses {view: L} and skipped-layer losses
    {view: {i: L(M∖i)}} (pipsteps.ablation.skip_losses); None for layers that were not candidates."""
    f = ABLATION_SCORES[score]
    lp = skipped.get("perturbed", {})
    return [f(full["clean"], full.get("perturbed", 0.0), skipped["clean"][i], lp.get(i, 0.0))
            if i in skipped["clean"] else None for i in range(n_layers)]
