"""Width importance scores per KV group and per MLP channel (docs/methods.md). Lowest score = pruned first.

The registry's `width` formula (pipsteps.methods.SCORES) gives each parameter's elementwise term from W, G_clean and
the second gradient file (perturbed; control for noise_control; the psdiff statistic for fisher_ps); it is summed
over every element of a group (pipsteps.width: a KV group = its q/k/v rows, biases and o_proj columns; a channel =
its gate/up rows, biases and down_proj column), then `post` applies (e.g. √ for a norm). `random` draws seeded
uniform scores. The gradient files are the safetensors written by pipsteps.gradients, keyed by parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipsteps import methods, selection
from pipsteps.errors import PipError
from pipsteps.io import grad_tensor, open_safetensors
from pipsteps.width import attn_shape

T = torch.Tensor

WIDTH_SCORES: dict[str, Callable[[T, T | None, T | None], T]] = {  # elementwise term, summed per group
    n: s.width for n, s in methods.SCORES.items() if s.width}
POST: dict[str, Callable[[float], float]] = {n: s.post for n, s in methods.SCORES.items() if s.post}
NEEDS = {n: s.needs.grads for n, s in methods.SCORES.items() if "width" in s.units}
ROWS = {"self_attn.q_proj": "attn", "self_attn.k_proj": "attn", "self_attn.v_proj": "attn",
        "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp"}  # a group is a contiguous block of output rows (+ bias)
COLS = {"self_attn.o_proj.weight": "attn", "mlp.down_proj.weight": "mlp"}  # a block of input columns


@dataclass(frozen=True)
class WidthScores:
    """Per-layer group sums of a score's elementwise term and the number of parameters in each group."""
    score: str
    attn: list[list[float]]  # [layer][KV group]
    mlp: list[list[float]]  # [layer][channel]
    attn_size: list[int]  # parameters per KV group, per layer
    mlp_size: list[int]  # parameters per channel, per layer

    def values(self, kind: str, normalise: bool = False) -> list[list[float]]:
        """Final scores of `kind` ("attn" or "mlp"); `normalise` divides by the group's parameter count first."""
        sums, sizes = (self.attn, self.attn_size) if kind == "attn" else (self.mlp, self.mlp_size)
        post = POST.get(self.score, lambda x: x)
        return [[post(s / n if normalise else s) for s in row] for row, n in zip(sums, sizes)]


def _kind(tail: str) -> str | None:
    """The group type ("attn" or "mlp") of a layer parameter; None for norms (incl. Qwen3 q_norm/k_norm) and the
    o_proj/down_proj biases, which every group shares."""
    return ROWS.get(tail.rsplit(".", 1)[0]) or COLS.get(tail)


def _group_sum(tail: str, e: T, n: int) -> T:
    """Sum one parameter's elementwise term into its n groups (fp64 accumulation)."""
    if tail in COLS:  # input columns: o_proj columns of one KV group's query heads are contiguous, like down's
        return e.sum(0, dtype=torch.float64).reshape(n, -1).sum(1)
    return e.reshape(n, -1).sum(1, dtype=torch.float64)  # output rows (+ bias) of q/k/v/gate/up


def width_scores(model: nn.Module, score: str, clean: Path | None = None, perturbed: Path | None = None,
                 seed: int = 0) -> WidthScores:
    """Group scores of every decoder layer from the cached gradient files (keys = the model's parameter names;
    `perturbed` is the second view's file: the control view for noise_control, the psdiff statistic for
    fisher_ps); `random` draws seeded uniform scores."""
    if score not in NEEDS:
        raise PipError(f"unknown width score {score!r}; allowed: {', '.join(NEEDS)}")
    random = methods.SCORES[score].kind == "random"
    second = ("perturbed", "control", "psdiff")
    given = {"clean": clean, **{v: perturbed for v in second}}
    files = {("perturbed" if v in second else v): given[v] for v in NEEDS[score]}
    missing = [v for v in NEEDS[score] if given[v] is None]
    if missing:
        raise PipError(f"width score {score!r} needs the {' and '.join(missing)} gradient file(s)")
    handles = {v: open_safetensors(p) for v, p in files.items()}
    if random:  # per layer: its KV groups, then its channels, from one generator
        shapes = [(attn_shape(layer.self_attn)[1], layer.mlp.gate_proj.out_features) for layer in model.model.layers]
        draws = iter(selection.random_scores(seed, [n for pair in shapes for n in pair]))
    out: dict[str, list] = {"attn": [], "mlp": [], "attn_size": [], "mlp_size": []}
    for i, layer in enumerate(model.model.layers):
        n_groups = {"attn": attn_shape(layer.self_attn)[1], "mlp": layer.mlp.gate_proj.out_features}
        sums = {k: torch.zeros(n, dtype=torch.float64) for k, n in n_groups.items()}
        sizes = dict.fromkeys(n_groups, 0)
        for tail, p in layer.named_parameters():
            kind = _kind(tail)
            if kind is None:
                continue
            sizes[kind] += p.numel() // n_groups[kind]
            if random:
                continue
            w = p.detach().float().cpu()
            g = {v: grad_tensor(f, files[v], f"model.layers.{i}.{tail}", w.shape) for v, f in handles.items()}
            sums[kind] += _group_sum(tail, WIDTH_SCORES[score](w, g.get("clean"), g.get("perturbed")), n_groups[kind])
        if random:
            sums = {k: torch.tensor(next(draws), dtype=torch.float64) for k in n_groups}
        for k in n_groups:
            if not torch.isfinite(sums[k]).all():
                raise PipError(f"non-finite {score} scores in layer {i} ({k}): check the gradient files")
            out[k].append(sums[k].tolist())
            out[f"{k}_size"].append(sizes[k])
    return WidthScores(score=score, **out)
