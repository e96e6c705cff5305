"""Per-layer depth scores (docs/methods.md): the layer sums every gradient score reads, computed in one streaming
pass over two cached gradient files (`layer_stats`), and the registry's formulas applied to them
(pipsteps.methods.SCORES: `depth` from these sums, `ablation` from the skipped-layer losses of pipsteps.ablation).
Lowest score = pruned first.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from pipsteps import methods
from pipsteps.grads import layer_of
from pipsteps.io import grad_tensor, open_safetensors

Stats = methods.Stats
DEPTH_SCORES: dict[str, Callable[[Stats], float]] = {n: s.depth for n, s in methods.SCORES.items() if s.depth}
ABLATION_SCORES: dict[str, Callable[[float, float, float, float], float]] = {  # (Lc, Lp, lc_i, lp_i)
    n: s.ablation for n, s in methods.SCORES.items() if s.ablation}


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
