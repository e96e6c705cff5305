"""Step (a Snakemake checkpoint): how many pruning rounds a variant needs, from the dense model and the config.

Depth: every decoder layer has the same size P_layer, so removing n layers removes n·P_layer of the total P.
n = the smallest count with n·P_layer ≥ target_ratio·P (never more than one layer past the target); rounds =
ceil(n / layers_per_round), the last round taking the remainder.

Width (pipsteps.width.plan_width): the same fraction f of the KV groups and of the MLP channels of the unprotected
layers goes, spread over `rounds` rounds (target / rounds per round); `ranking` global spends the per-round
parameter budget over both group types instead.

One-shot methods (`pip_oneshot`, `block_influence`) do everything in one round. Fails up front, before any
gradient is computed, when the target cannot be reached with the unprotected layers or would empty a layer.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli, methods
from pipsteps.io import PipError, count_params, write_json
from pipsteps.surgery import decoder_layers, load_model
from pipsteps.width import plan_width, width_shape

log = logging.getLogger("pipsteps.plan")
UNITS = ("depth", "width")
METHODS, ONESHOT, DEPTH_ONLY = methods.METHODS, methods.ONESHOT, methods.DEPTH_ONLY


def base_method(method: str) -> tuple[str, int | None]:
    """(method, seed) of a method wildcard: `random_s3` is the random method with seed 3, `pip-gap_greedy` the pip
    method (with an explicit score); others carry no seed."""
    try:
        base, _, seed = methods.parse(method)
    except methods.MethodError as e:
        raise PipError(str(e)) from None
    return base, seed


def default_protect(unit: str, n_layers: int) -> tuple[int, int]:
    """Protected first/last layers when the config leaves them null: none for depth; for width 4 first and 2 last
    on a 32-layer model, scaled to the depth (round(L/8), round(L/16))."""
    if unit == "depth":
        return 0, 0
    return int(n_layers / 8 + 0.5), int(n_layers / 16 + 0.5)


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


def depth_plan(cfg: PlanConfig, n_layers: int, total: int, per_layer: int) -> dict[str, Any]:
    if not 0.0 < cfg.target_ratio < 1.0:
        raise PipError(f"prune.target_ratio must be in (0, 1), got {cfg.target_ratio}")
    first, last = (cfg.protect_first or 0), (cfg.protect_last or 0)
    n = math.ceil(cfg.target_ratio * total / per_layer - 1e-9)
    removable = n_layers - first - last
    if n > removable:
        raise PipError(f"target_ratio {cfg.target_ratio} is unreachable: it needs {n} of {n_layers} layers removed "
                       f"but only {removable} are unprotected (protect_first={first}, protect_last={last}); "
                       "lower the ratio or protect fewer layers")
    k = n if cfg.oneshot or cfg.method in ONESHOT else cfg.layers_per_round
    per_round = [k] * (n // k) + ([n % k] if n % k else [])
    return {"unit": "depth", "method": cfg.method, "target_ratio": cfg.target_ratio, "layers_to_remove": n,
            "rounds": len(per_round), "per_round": per_round, "num_layers": n_layers, "params_total": total,
            "params_per_layer": per_layer, "expected_ratio": n * per_layer / total,
            "protect_first": first, "protect_last": last}


def run(cfg: PlanConfig, model_dir: Path) -> dict[str, Any]:
    _, oneshot = check(cfg)
    model = load_model(model_dir, device="cpu")
    layers = decoder_layers(model)
    total = count_params(model)["total"]
    first, last = default_protect(cfg.unit, len(layers))
    first = first if cfg.protect_first is None else cfg.protect_first
    last = last if cfg.protect_last is None else cfg.protect_last
    if cfg.unit == "depth":
        per_layer = sum(p.numel() for p in layers[0].parameters())
        plan = depth_plan(PlanConfig(**{**asdict(cfg), "protect_first": first, "protect_last": last,
                                        "oneshot": oneshot}), len(layers), total, per_layer)
        log.info("plan: remove %d of %d layers in %d rounds (expected ratio %.4f)", plan["layers_to_remove"],
                 plan["num_layers"], plan["rounds"], plan["expected_ratio"])
        return plan
    shape = width_shape(model)
    plan = plan_width(**shape, params_total=total, target_ratio=cfg.target_ratio, rounds=1 if oneshot else cfg.rounds,
                      protect_first=first, protect_last=last)
    log.info("plan: remove %d KV groups and %d MLP channels of %d layers (fraction %.4f) in %d rounds, %s ranking "
             "(expected ratio %.4f)", plan["kv_groups_total"], plan["channels_total"], len(plan["candidates"]),
             plan["fraction"], plan["rounds"], cfg.ranking, plan["expected_ratio"])
    return {"unit": "width", "method": cfg.method, "target_ratio": cfg.target_ratio, "ranking": cfg.ranking,
            "num_layers": len(layers), "params_total": total, "protect_first": first, "protect_last": last,
            "shape": shape, **plan}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="dense model directory")
        p.add_argument("--out", required=True, type=Path, help="output plan JSON")

    cfg, ns = cli.parse(PlanConfig, argv, __doc__.splitlines()[0], extra)
    write_json(ns.out, {"config": asdict(cfg), **run(cfg, ns.model)})


if __name__ == "__main__":
    cli.main_wrapper(main)
