"""Step (a Snakemake checkpoint): how many pruning rounds a variant needs, from the dense model and the config.

Depth removes n whole layers, the smallest count that reaches target_ratio, `layers_per_round` at a time; width
removes the same fraction of the KV groups and MLP channels of the unprotected layers, spread evenly over `rounds`
rounds (the formulas: pipsteps.unit_plans, the planning half of the units, which this step imports alone). It reads
the model's shape from its file headers (pipsteps.shape): torch-free, no weights loaded, any model size.

One-shot methods (`pip_oneshot`, `block_influence`) do everything in one round. Fails up front, before any
gradient is computed, when the target cannot be reached with the unprotected layers or would empty a layer.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli, methods, selection, unit_plans
from pipsteps.errors import PipError
from pipsteps.files import write_json
from pipsteps.shape import read_shape

log = logging.getLogger("pipsteps.plan")
UNITS = methods.UNITS
METHODS, ONESHOT, DEPTH_ONLY = methods.METHODS, methods.ONESHOT, methods.DEPTH_ONLY


def base_method(method: str) -> tuple[str, int | None]:
    """(method, seed) of a method wildcard: `random_s3` is the random method with seed 3, `pip-gap_greedy` the pip
    method (with an explicit score); others carry no seed."""
    try:
        base, _, seed = methods.parse(method)
    except methods.MethodError as e:
        raise PipError(str(e)) from None
    return base, seed


@dataclass(frozen=True)
class PlanConfig:
    unit: str = field(default="depth", metadata={"help": "pruning unit: depth or width"})
    method: str = field(default="pip", metadata={"help": "pruning method (pipsteps.plan.METHODS, random_sN)"})
    target_ratio: float = field(default=0.2, metadata={"help": "fraction of total parameters to remove"})
    layers_per_round: int = field(default=1, metadata={"help": "layers removed per round (depth)"})
    rounds: int = field(default=4, metadata={"help": "pruning rounds (width)"})
    ranking: str = field(default="local", metadata={"help": "width: local (per group type) or global"})
    protect_first: int | None = field(default=None, metadata={"help": "first layers never pruned (none: unit default)"})
    protect_last: int | None = field(default=None, metadata={"help": "last layers never pruned (none: unit default)"})
    oneshot: bool = field(default=False, metadata={"help": "remove everything in a single round"})


def check(cfg: PlanConfig) -> tuple[str, bool]:
    """(base method, one-shot) after checking the unit, method and ranking names."""
    if cfg.unit not in UNITS:
        raise PipError(f"unknown unit {cfg.unit!r}; allowed: {', '.join(UNITS)}")
    method, _ = base_method(cfg.method)
    if cfg.unit != "depth" and method in DEPTH_ONLY:
        raise PipError(f"method {method!r} prunes whole layers only (unit depth), not unit {cfg.unit!r}")
    explicit = methods.parse(cfg.method)[1]
    if explicit and explicit not in methods.scores_of(cfg.unit):
        raise PipError(f"method {cfg.method!r}: {explicit!r} is not a {cfg.unit} score; allowed: "
                       f"{', '.join(methods.scores_of(cfg.unit))}")
    if cfg.ranking not in ("local", "global"):
        raise PipError(f"unknown ranking {cfg.ranking!r}; allowed: local, global")
    return method, cfg.oneshot or method in ONESHOT


def run(cfg: PlanConfig, model_dir: Path) -> dict[str, Any]:
    _, oneshot = check(cfg)
    shape = read_shape(model_dir)  # from the file headers: no weights loaded, no torch
    first, last = selection.protection(cfg.unit, shape.layers, cfg.protect_first, cfg.protect_last)
    resolved = replace(cfg, protect_first=first, protect_last=last, oneshot=oneshot)
    return unit_plans.plan(cfg.unit, resolved, shape)  # the units' planning half


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="dense model directory")
        p.add_argument("--out", required=True, type=Path, help="output plan JSON")

    cfg, ns = cli.parse(PlanConfig, argv, __doc__.splitlines()[0], extra)
    write_json(ns.out, {"config": asdict(cfg), **run(cfg, ns.model)})


if __name__ == "__main__":
    cli.main_wrapper(main)
