"""The registry of pruning methods and importance scores (pure Python: the workflow, the config check, the schema
test, the plots and the bench reports import it; the torch steps call the formulas it holds).

A score (SCORES) says what it reads and gives its formula, one line per unit; lowest score = pruned first:

- `depth`: per decoder layer, from the layer sums of pipsteps.scores.layer_stats — with D = G_clean − G_perturbed:
  dd=ΣD², cc=ΣG_c², pp=ΣG_p², cp=ΣG_c·G_p, wd=Σ|W·D|, wd2=Σ(W·D)², wc=Σ|W·G_c|, wc2=Σ(W·G_c)²,
  ww=ΣW², wps=ΣW²·S (S: the psdiff statistic);
- `width`: the elementwise term of one parameter (W, G_clean, G_second) summed per KV group or MLP channel
  (pipsteps.width_scores), then `post` of the group sum; G_second is the perturbed view's gradient, the control
  view's for noise_control and the psdiff statistic for fisher_ps;
- `ablation`: per decoder layer, forward-only, from the calibration losses (Lc, Lp) = L(M, s), L(M, s̃) and
  (lc, lp) = L(M∖i, s), L(M∖i, s̃) of the model with layer i skipped (pipsteps.ablation);
- kind `influence`: block influence 1 − cos(x_in, x_out) of a layer's hidden states (pipsteps.ablation), from the
  dense model once (`block_influence`) or on the current model every round (`block_influence_iter`);
- kind `random`: seeded uniform draws.

Inputs a score reads (`Needs`): `grads`, gradient files of the model being pruned, one per view (clean, perturbed,
control = a second clean batch, or psdiff: the per-sample squared clean-minus-perturbed difference); `calib`,
calibration views the prune step runs forward passes on; `influence`, the dense model's block influence JSON.

A method (METHOD_TABLE) is a PIP method, scored by the unit's configured PIP score or an explicit one
(`pip-gap_greedy`), or a baseline with its own score; one-shot methods remove everything in round 1. A method
wildcard is `method`, `method-score` or `random_sN` (the random method with seed N).

Adding a score: its formula in one SCORES entry, and its name in the schema's enum (tests/unit/test_registry.py
checks the schema against this registry).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

UNITS = ("depth", "width")
Stats = dict[str, float]


@dataclass(frozen=True)
class Needs:
    grads: tuple[str, ...] = ()
    calib: tuple[str, ...] = ()
    influence: bool = False


@dataclass(frozen=True)
class Score:
    needs: Needs
    pip: bool = True  # a PIP score: it reads the perturbed view (or is that view's control)
    depth: Callable[[Stats], float] | None = None
    width: Callable[[Any, Any, Any], Any] | None = None
    post: Callable[[float], float] | None = None
    ablation: Callable[[float, float, float, float], float] | None = None
    special: str | None = None  # "influence" or "random"; formulas outside the table

    @property
    def kind(self) -> str:
        """How the prune step computes it: gradient, ablation, influence or random."""
        return self.special or ("ablation" if self.ablation else "gradient")

    @property
    def units(self) -> tuple[str, ...]:
        if self.special == "random":
            return UNITS
        return tuple(u for u, f in (("depth", self.depth or self.ablation or self.special), ("width", self.width))
                     if f)


CP, CC, PS, C = Needs(grads=("clean", "perturbed")), Needs(grads=("clean", "control")), Needs(grads=("psdiff",)), \
    Needs(grads=("clean",))
FWD_CP, FWD_C = Needs(calib=("clean", "perturbed")), Needs(calib=("clean",))
SCORES: dict[str, Score] = {
    # PIP scores from the two views' gradients
    "norm_diff": Score(CP, depth=lambda s: math.sqrt(s["dd"]), width=lambda w, gc, gp: (gc - gp).square(),
                       post=math.sqrt),  # ‖D‖₂ (PertImport, the paper's literal reading)
    # ‖D‖₂ / ‖G_c‖₂
    "rel_diff": Score(CP, depth=lambda s: math.sqrt(s["dd"]) / max(math.sqrt(s["cc"]), 1e-30)),
    "cos_diff": Score(CP, depth=lambda s: 1.0 - s["cp"] / max(math.sqrt(s["cc"] * s["pp"]), 1e-30)),  # 1 − cos
    "taylor_diff": Score(CP, depth=lambda s: s["wd"], width=lambda w, gc, gp: (w * (gc - gp)).abs()),  # Σ|W·D|
    "fisher_diff": Score(CP, depth=lambda s: s["wd2"], width=lambda w, gc, gp: (w * (gc - gp)).square()),  # Σ(W·D)²
    "taylor_gap": Score(CP, width=lambda w, gc, gp: (w * gc).abs() + (w * (gc - gp)).abs()),  # Σ|W·G_c| + |W·D|
    "taylor_both": Score(CP, width=lambda w, gc, gp: (w * gc).abs() + (w * gp).abs()),  # Σ|W·G_c| + |W·G_p|
    "vec_diff": Score(CP, width=lambda w, gc, gp: w * (gc - gp), post=abs),  # |ΣW·D|: signed terms, abs of the sum
    # the control: a second clean batch in place of the perturbed view (does the perturbation add signal?)
    "noise_control": Score(CC, depth=lambda s: math.sqrt(s["dd"]), width=lambda w, gc, gp: (w * (gc - gp)).square()),
    "fisher_ps": Score(PS, depth=lambda s: s["wps"], width=lambda w, gc, gp: w.square() * gp),  # ΣW²·S
    # PIP scores from forward passes with each layer skipped; gap = Lp − Lc
    "gap_ablation": Score(FWD_CP, ablation=lambda Lc, Lp, lc, lp: abs((lp - lc) - (Lp - Lc))),  # |Δgap|
    "pip_greedy": Score(FWD_CP, ablation=lambda Lc, Lp, lc, lp: (lc - Lc) + (lp - Lp)),  # both views' loss increase
    "gap_greedy": Score(FWD_CP, ablation=lambda Lc, Lp, lc, lp: (lc - Lc) + abs((lp - lc) - (Lp - Lc))),
    # baseline scores
    "taylor": Score(C, pip=False, depth=lambda s: s["wc"], width=lambda w, gc, gp: (w * gc).abs()),  # Σ|W·G_c|
    "taylor_sq": Score(C, pip=False, depth=lambda s: s["wc2"], width=lambda w, gc, gp: (w * gc).square()),
    "magnitude": Score(Needs(), pip=False, depth=lambda s: math.sqrt(s["ww"]), width=lambda w, gc, gp: w.square(),
                       post=math.sqrt),  # ‖W‖₂
    "random": Score(Needs(), pip=False, special="random"),
    "sleb": Score(FWD_C, pip=False, ablation=lambda Lc, Lp, lc, lp: lc),  # SLEB: the smallest clean loss after
    "block_influence": Score(Needs(influence=True), pip=False, special="influence"),  # ShortGPT, one-shot
    "block_influence_iter": Score(FWD_C, pip=False, special="influence"),
}


@dataclass(frozen=True)
class Method:
    score: str | None  # a baseline's own score; None: a PIP method (the unit's configured score, or pip-SCORE)
    oneshot: bool = False

    @property
    def units(self) -> tuple[str, ...]:
        return UNITS if self.score is None else SCORES[self.score].units


METHOD_TABLE: dict[str, Method] = {
    "pip": Method(None), "pip_oneshot": Method(None, oneshot=True),
    **{n: Method(n) for n in ("taylor", "taylor_sq", "magnitude", "random")},
    "block_influence": Method("block_influence", oneshot=True),
    **{n: Method(n) for n in ("block_influence_iter", "sleb")},
}

METHODS = tuple(METHOD_TABLE)
PIP_METHODS = tuple(n for n, m in METHOD_TABLE.items() if m.score is None)
ONESHOT = tuple(n for n, m in METHOD_TABLE.items() if m.oneshot)
DEPTH_ONLY = tuple(n for n, m in METHOD_TABLE.items() if m.units == ("depth",))
DEPTH_SCORES = {n: s.needs for n, s in SCORES.items() if s.pip and "depth" in s.units}
WIDTH_SCORES = {n: s.needs for n, s in SCORES.items() if s.pip and "width" in s.units}
# gradient view -> (calibration view it is taken on, paired perturbed view): a round r ≥ 2 takes its own gradients
GRAD_SOURCES: dict[str, tuple[str, str | None]] = {"clean": ("clean", None), "perturbed": ("perturbed", None),
                                                   "control": ("control", None), "psdiff": ("clean", "perturbed")}
SEEDED = re.compile(r"^random_s(\d+)$")


def _alt(names) -> str:
    return "|".join(sorted(names, key=lambda n: (-len(n), n)))  # longest first


BASELINE_NAMES = tuple(n for n in METHODS if n not in PIP_METHODS)
# the Snakemake method wildcard: exactly the registry's names, a PIP method with one of its scores, random_sN
WILDCARD_RE = (f"(?:{_alt(PIP_METHODS)})(?:-(?:{_alt({*DEPTH_SCORES, *WIDTH_SCORES})}))?"
               rf"|random_s\d+|{_alt(BASELINE_NAMES)}")
# the schema's pattern for configured method names (prune.baselines, prune.grid.methods); an unknown SCORE in
# pip-SCORE passes it and is named by pipsteps.config.check_methods
SCHEMA_PATTERN = f"^(({'|'.join(PIP_METHODS)})(-[a-z_]+)?|{'|'.join(BASELINE_NAMES)})$"


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
    """The PIP scores of a unit and what each reads."""
    return WIDTH_SCORES if unit == "width" else DEPTH_SCORES


def applies(unit: str, method: str) -> bool:
    """Whether a method wildcard runs at a unit: the method has the unit, and an explicit score must be one of the
    unit's (a grid skips the other combinations)."""
    base, score, _ = parse(method)
    if unit not in METHOD_TABLE[base].units:
        return False
    return score is None or score in scores_of(unit)


def score_of(method: str, configured: str) -> str:
    """The score a method wildcard prunes with: a baseline's own, else the explicit or the configured PIP score."""
    base, explicit, _ = parse(method)
    own = METHOD_TABLE[base].score
    return own if own is not None else (explicit or configured)


def score(unit: str, method: str, configured: str) -> Score:
    """The registry entry a variant scores with; MethodError when the method or its score has no such unit."""
    base = parse(method)[0]
    if unit not in METHOD_TABLE[base].units:
        raise MethodError(f"method {base!r} prunes whole layers only (unit depth), not unit {unit!r}")
    name = score_of(method, configured)
    if METHOD_TABLE[base].score is None and name not in scores_of(unit):
        raise MethodError(f"unknown {unit} score {name!r} for method {base!r}; allowed: {', '.join(scores_of(unit))}")
    return SCORES[name]


def needs(unit: str, method: str, configured: str) -> Needs:
    """The cached inputs a variant reads; `configured` is the unit's configured PIP score (ignored by the baselines
    and by `method-score` wildcards, which carry their own)."""
    return score(unit, method, configured).needs
