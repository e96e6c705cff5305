"""The pruning methods and scores, and the cached inputs each one reads (pure Python: the workflow imports it).

A method wildcard is `method`, `method-score` (a PIP method with an explicit score, e.g. `pip-gap_greedy`, so one
grid compares several scores side by side) or `random_sN` (the random method with seed N). Inputs:

- `grads`: gradient files of the model being pruned (round 1: the dense model's, shared by every variant),
  one per calibration view (clean, perturbed, or control = a second clean batch), or `psdiff`: the per-sample
  squared clean-minus-perturbed gradient difference (pipsteps.gradients);
- `calib`: calibration views the prune step runs forward passes on itself (forward-only ablation scores);
- `influence`: the dense model's block influence JSON (one-shot ShortGPT).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Needs:
    grads: tuple[str, ...] = ()
    calib: tuple[str, ...] = ()
    influence: bool = False


CP, CC, PS = ("clean", "perturbed"), ("clean", "control"), ("psdiff",)
PIP_METHODS = ("pip", "pip_oneshot")
# depth scores of the PIP methods (pipsteps.scores: gradient statistics; pipsteps.ablation: forward-only)
DEPTH_SCORES: dict[str, Needs] = {
    "norm_diff": Needs(grads=CP), "rel_diff": Needs(grads=CP), "cos_diff": Needs(grads=CP),
    "taylor_diff": Needs(grads=CP), "fisher_diff": Needs(grads=CP), "noise_control": Needs(grads=CC),
    "fisher_ps": Needs(grads=PS),
    "gap_ablation": Needs(calib=CP), "pip_greedy": Needs(calib=CP), "gap_greedy": Needs(calib=CP),
}
# width scores of the PIP methods (pipsteps.width_scores)
WIDTH_SCORES: dict[str, Needs] = {
    "taylor_diff": Needs(grads=CP), "norm_diff": Needs(grads=CP), "taylor_gap": Needs(grads=CP),
    "taylor_both": Needs(grads=CP), "vec_diff": Needs(grads=CP), "fisher_diff": Needs(grads=CP),
    "noise_control": Needs(grads=CC), "fisher_ps": Needs(grads=PS),
}
BASELINES: dict[str, Needs] = {
    "taylor": Needs(grads=("clean",)), "taylor_sq": Needs(grads=("clean",)), "magnitude": Needs(), "random": Needs(),
    "block_influence": Needs(influence=True), "block_influence_iter": Needs(calib=("clean",)),
    "sleb": Needs(calib=("clean",)),
}
METHODS = (*PIP_METHODS, *BASELINES)
# gradient view -> (calibration view it is taken on, paired perturbed view): a round r ≥ 2 takes its own gradients
GRAD_SOURCES: dict[str, tuple[str, str | None]] = {"clean": ("clean", None), "perturbed": ("perturbed", None),
                                                   "control": ("control", None), "psdiff": ("clean", "perturbed")}
ONESHOT = ("pip_oneshot", "block_influence")
DEPTH_ONLY = ("block_influence", "block_influence_iter", "sleb")
SEEDED = re.compile(r"^random_s(\d+)$")
WILDCARD_RE = (r"(?:pip|pip_oneshot)(?:-[a-z_]+)?|taylor(?:_sq)?|magnitude|block_influence(?:_iter)?|sleb"
               r"|random(?:_s\d+)?")  # the Snakemake method wildcard


def grad_calib_views(grads: tuple[str, ...]) -> tuple[str, ...]:
    """The calibration views that gradient views are taken on (clean, perturbed, control order)."""
    used = {v for g in grads for v in GRAD_SOURCES[g] if v}
    return tuple(v for v in ("clean", "perturbed", "control") if v in used)


class MethodError(ValueError):
    pass


def parse(method: str) -> tuple[str, str | None, int | None]:
    """(method, explicit score or None, seed or None) of a method wildcard: `pip-rel_diff` → ("pip", "rel_diff",
    None), `random_s3` → ("random", None, 3), `taylor` → ("taylor", None, None)."""
    m = SEEDED.match(method)
    if m:
        return "random", None, int(m.group(1))
    base, _, score = method.partition("-")
    if base not in METHODS or (score and base not in PIP_METHODS):
        raise MethodError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}, random_sN (seed N) and "
                          f"{'/'.join(PIP_METHODS)}-SCORE (an explicit PIP score)")
    return base, score or None, None


def scores_of(unit: str) -> dict[str, Needs]:
    return WIDTH_SCORES if unit == "width" else DEPTH_SCORES


def applies(unit: str, method: str) -> bool:
    """Whether a method wildcard runs at a unit: not a depth-only method at width, and an explicit score must be
    one of the unit's (a grid skips the other combinations)."""
    base, score, _ = parse(method)
    if unit != "depth" and base in DEPTH_ONLY:
        return False
    return score is None or score in scores_of(unit)


def needs(unit: str, method: str, score: str) -> Needs:
    """The cached inputs a variant reads; `score` is the configured PIP score (ignored by the baselines and by
    `method-score` wildcards, which carry their own)."""
    base, explicit, _ = parse(method)
    if unit != "depth" and base in DEPTH_ONLY:
        raise MethodError(f"method {base!r} prunes whole layers only (unit depth), not unit {unit!r}")
    if base not in PIP_METHODS:
        return BASELINES[base]
    name = explicit or score
    table = scores_of(unit)
    if name not in table:
        raise MethodError(f"unknown {unit} score {name!r} for method {base!r}; allowed: {', '.join(table)}")
    return table[name]
