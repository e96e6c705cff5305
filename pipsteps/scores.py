"""Per-layer importance scores for depth pruning (METHOD.md §4, §6). Lowest score = pruned first.

With D = G_clean − G_perturbed summed over all parameters of decoder layer i:

    norm_diff    ‖D_i‖₂                                   (PIP, literal reading: PertImport)
    rel_diff     ‖D_i‖₂ / ‖G_clean,i‖₂
    cos_diff     1 − cos(G_clean,i, G_perturbed,i)
    taylor_diff  Σ |W_i ⊙ D_i|
    taylor       Σ |W_i ⊙ G_clean,i|                      (LLM-Pruner Element¹, clean view only)
    magnitude    ‖W_i‖₂

Every score is computed from one streaming pass over the two cached gradient files (`layer_stats`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch

from pipsteps.gradients import layer_of
from pipsteps.io import PipError, open_safetensors

Stats = dict[str, float]
DEPTH_SCORES: dict[str, Callable[[Stats], float]] = {
    "norm_diff": lambda s: math.sqrt(s["dd"]),
    "rel_diff": lambda s: math.sqrt(s["dd"]) / max(math.sqrt(s["cc"]), 1e-30),
    "cos_diff": lambda s: 1.0 - s["cp"] / max(math.sqrt(s["cc"] * s["pp"]), 1e-30),
    "taylor_diff": lambda s: s["wd"],
    "taylor": lambda s: s["wc"],
    "magnitude": lambda s: math.sqrt(s["ww"]),
}
NEEDS = {"norm_diff": ("clean", "perturbed"), "rel_diff": ("clean", "perturbed"), "cos_diff": ("clean", "perturbed"),
         "taylor_diff": ("clean", "perturbed"), "taylor": ("clean",), "magnitude": ()}


def _sum(x: torch.Tensor) -> float:
    return float(x.sum(dtype=torch.float64))  # fp32 products, fp64 accumulation


def layer_stats(model: torch.nn.Module, clean: Path | None, perturbed: Path | None) -> dict[int, Stats]:
    """Per-layer sums of the products every score needs: dd=ΣD², cc=ΣGc², pp=ΣGp², cp=ΣGc·Gp,
    wd=Σ|W·D|, wc=Σ|W·Gc|, ww=ΣW²."""
    stats: dict[int, Stats] = defaultdict(lambda: defaultdict(float))
    weights = {n: p.detach() for n, p in model.named_parameters() if layer_of(n) is not None}
    fc = open_safetensors(clean) if clean else None
    fp = open_safetensors(perturbed) if perturbed else None
    for name, w in weights.items():
        s, w = stats[layer_of(name)], w.float()
        s["ww"] += _sum(w * w)
        if fc is None:
            continue
        if name not in fc.keys():
            raise PipError(f"gradient file {clean} has no tensor {name}: it was computed on another model")
        gc = fc.get_tensor(name).float()
        s["cc"] += _sum(gc * gc)
        s["wc"] += _sum((w * gc).abs_())
        if fp is not None:
            gp = fp.get_tensor(name).float()
            d = gc - gp
            s["pp"] += _sum(gp * gp)
            s["cp"] += _sum(gc * gp)
            s["dd"] += _sum(d * d)
            s["wd"] += _sum((w * d).abs_())
    return {i: dict(s) for i, s in sorted(stats.items())}


def depth_scores(score: str, stats: dict[int, Stats]) -> list[float]:
    if score not in DEPTH_SCORES:
        raise ValueError(f"unknown depth score {score!r}; allowed: {', '.join(DEPTH_SCORES)}")
    return [DEPTH_SCORES[score](stats[i]) for i in sorted(stats)]
