"""The pieces both pruning units share (pipsteps.units): protected layers, per-round budgets, seeded random
scores and lowest-score selection. Written once; depth and width differ only in what a "group" is."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipsteps import methods
from pipsteps.errors import PipError


@dataclass(frozen=True)
class RoundInputs:
    """What a round's scoring reads besides the model: gradient files {view: path}, calibration views
    {view: path} (forward-only scores), the dense model's block influence JSON, and the method's seed."""
    grads: dict[str, Path | None] = field(default_factory=dict)
    calib: dict[str, Path | None] = field(default_factory=dict)
    influence: Path | None = None
    seed: int = 0


def grad_files(unit: str, cfg: Any, grads: dict[str, Path | None]) -> tuple[Path | None, Path | None]:
    """(first, second) gradient file a score reads: clean, and perturbed (control for noise_control, the psdiff
    statistic alone for fisher_ps). `cfg`: the round's method and configured score."""
    need = methods.needs(unit, cfg.method, cfg.score).grads
    missing = [v for v in need if grads.get(v) is None]
    if missing:
        raise PipError(f"{cfg.method} ({methods.score_of(cfg.method, cfg.score)}) needs the "
                       f"{' and '.join(missing)} gradient file(s)")
    return (grads["clean"] if "clean" in need else None), next((grads[v] for v in need if v != "clean"), None)


def protection(unit: str, n_layers: int, first: int | None, last: int | None) -> tuple[int, int]:
    """Protected (first, last) layers; a None takes the unit's default: none for depth, round(L/8) first and
    round(L/16) last for width (4 and 2 of 32 layers)."""
    d_first, d_last = (0, 0) if unit == "depth" else (int(n_layers / 8 + 0.5), int(n_layers / 16 + 0.5))
    return (d_first if first is None else first), (d_last if last is None else last)


def candidates(n_layers: int, first: int, last: int) -> list[int]:
    """The unprotected layers."""
    return list(range(first, n_layers - last))


def split_even(total: int, rounds: int) -> list[int]:
    """`total` removals over `rounds` rounds, as even as whole numbers allow (the first rounds take the rest)."""
    return [total // rounds + (r < total % rounds) for r in range(rounds)]


def split_chunks(total: int, size: int) -> list[int]:
    """`total` removals in rounds of `size`, the last round taking the remainder."""
    return [size] * (total // size) + ([total % size] if total % size else [])


def round_seed(seed: int, round_: int) -> int:
    """The generator seed of one round of a seeded method (a new draw every round)."""
    return seed * 100_003 + round_


def random_scores(seed: int, sizes: Sequence[int]) -> list[list[float]]:
    """The random method's scores at either unit: one list of uniform draws per size, in order, from one generator
    seeded with `seed` (a round's: round_seed)."""
    import torch  # here only: the plan step imports this module without torch

    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=gen, dtype=torch.float64).tolist() for n in sizes]


def lowest(scores: Sequence[Sequence[float]], k: int, candidates: Sequence[int], min_keep: int = 1
           ) -> dict[int, list[int]]:
    """The k lowest-scoring groups over the candidate layers' rows of `scores` (ties: lower layer, then lower
    index), never leaving a layer with fewer than `min_keep` groups. Returns {layer: [positions]}. Depth is the
    case of one group (the layer itself) per row with min_keep 0."""
    order = sorted((s, i, g) for i in candidates for g, s in enumerate(scores[i]))
    left = {i: len(scores[i]) for i in candidates}
    out: dict[int, list[int]] = defaultdict(list)
    taken = 0
    for _, i, g in order:
        if taken == k:
            break
        if left[i] > min_keep:
            out[i].append(g)
            left[i] -= 1
            taken += 1
    if taken < k:
        raise PipError(f"cannot remove {k} groups: only {taken} can go while keeping {min_keep} per layer")
    return {i: sorted(v) for i, v in sorted(out.items())}
