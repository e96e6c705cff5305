"""The planning half of the pruning units (pipsteps.units): how much each round removes. The plan step imports only
this module, so editing a score's code never reruns a plan.

Depth: every decoder layer has the same size P_layer, so removing n layers removes n·P_layer of the total P; n is the
smallest count with n·P_layer ≥ target_ratio·P (never more than one layer past the target), removed
`layers_per_round` at a time (the last round takes the remainder; one-shot methods: all in round 1).
Width: the same fraction f of the KV groups and of the MLP channels of the unprotected layers goes, so that
target_ratio of the total parameters go, spread evenly over `rounds` rounds (one-shot methods: 1); `global` ranking
gets the matching parameter budget per round.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pipsteps import methods, selection
from pipsteps.errors import PipError
from pipsteps.shape import ModelShape

log = logging.getLogger("pipsteps.unit_plans")


def depth_plan(cfg: Any, n_layers: int, total: int, per_layer: int) -> dict[str, Any]:
    """The depth plan of a PlanConfig-like `cfg` (target_ratio, method, layers_per_round, protect_first/last,
    oneshot) for a model of `n_layers` layers of `per_layer` parameters each and `total` parameters."""
    if not 0.0 < cfg.target_ratio < 1.0:
        raise PipError(f"prune.target_ratio must be in (0, 1), got {cfg.target_ratio}")
    first, last = (cfg.protect_first or 0), (cfg.protect_last or 0)
    n = math.ceil(cfg.target_ratio * total / per_layer - 1e-9)
    removable = n_layers - first - last
    if n > removable:
        raise PipError(f"target_ratio {cfg.target_ratio} is unreachable: it needs {n} of {n_layers} layers removed "
                       f"but only {removable} are unprotected (protect_first={first}, protect_last={last}); "
                       "lower the ratio or protect fewer layers")
    per_round = selection.split_chunks(n, n if cfg.oneshot or cfg.method in methods.ONESHOT else cfg.layers_per_round)
    return {"unit": "depth", "method": cfg.method, "target_ratio": cfg.target_ratio, "layers_to_remove": n,
            "rounds": len(per_round), "per_round": per_round, "num_layers": n_layers, "params_total": total,
            "params_per_layer": per_layer, "expected_ratio": n * per_layer / total,
            "protect_first": first, "protect_last": last}


def plan_width(*, layers: int, kv_heads: int, channels: int, kv_group_params: int, channel_params: int,
               params_total: int, target_ratio: float, rounds: int = 4, protect_first: int = 0,
               protect_last: int = 0) -> dict[str, Any]:
    """Per-round numbers of KV groups and MLP channels to remove so that `target_ratio` of the total parameters go.

    The same fraction f of the KV groups and of the channels of the unprotected layers is removed (local ranking);
    `params_per_round` is the matching budget for global ranking. Raises PipError, before any heavy work, when
    the protected layers make the target unreachable or when f would leave some layer with zero KV groups or zero
    channels (more removals than all groups minus one per layer)."""
    if not 0 < target_ratio < 1:
        raise PipError(f"prune.target_ratio must be in (0, 1), got {target_ratio}")
    if rounds < 1:
        raise PipError(f"prune.rounds must be ≥ 1, got {rounds}")
    candidates = selection.candidates(layers, protect_first, protect_last)
    if not candidates:
        raise PipError(f"protect_first={protect_first} + protect_last={protect_last} protect all {layers} layers: "
                       "nothing to width-prune")
    n = len(candidates)
    prunable = n * (kv_heads * kv_group_params + channels * channel_params)
    f = target_ratio * params_total / prunable
    if f >= 1:
        raise PipError(f"prune.target_ratio {target_ratio} is unreachable by width pruning: the {n} unprotected "
                       f"layers hold {prunable / params_total:.1%} of the parameters, all heads and channels included")
    attn_total, mlp_total = round(f * n * kv_heads), round(f * n * channels)
    if attn_total > n * (kv_heads - 1):
        raise PipError(f"prune.target_ratio {target_ratio} would leave a layer with zero attention heads: it removes "
                       f"{attn_total} of the {n * kv_heads} KV groups ({kv_heads} per layer) in the {n} unprotected "
                       f"layers, at most {n * (kv_heads - 1)} can go (lower the ratio or protect fewer layers)")
    if mlp_total > n * (channels - 1):
        raise PipError(f"prune.target_ratio {target_ratio} would leave a layer with zero MLP channels: it removes "
                       f"{mlp_total} of {n * channels}")
    if attn_total == 0:
        log.warning("target ratio %s removes no KV group (%d per layer): only MLP channels are pruned",
                    target_ratio, kv_heads)
    attn_rounds, mlp_rounds = selection.split_even(attn_total, rounds), selection.split_even(mlp_total, rounds)
    removed = attn_total * kv_group_params + mlp_total * channel_params
    return {"candidates": candidates, "fraction": f, "rounds": rounds, "kv_groups_total": attn_total,
            "channels_total": mlp_total, "kv_groups_per_round": attn_rounds, "channels_per_round": mlp_rounds,
            "params_per_round": [a * kv_group_params + m * channel_params for a, m in zip(attn_rounds, mlp_rounds)],
            "expected_removed_params": removed, "expected_ratio": removed / params_total}


def _depth(cfg: Any, shape: ModelShape) -> dict[str, Any]:
    plan = depth_plan(cfg, shape.layers, shape.params_total, shape.params_per_layer)
    log.info("plan: remove %d of %d layers in %d rounds (expected ratio %.4f)", plan["layers_to_remove"],
             plan["num_layers"], plan["rounds"], plan["expected_ratio"])
    return plan


def _width(cfg: Any, shape: ModelShape) -> dict[str, Any]:
    plan = plan_width(**shape.width(), params_total=shape.params_total, target_ratio=cfg.target_ratio,
                      rounds=1 if cfg.oneshot else cfg.rounds, protect_first=cfg.protect_first,
                      protect_last=cfg.protect_last)
    log.info("plan: remove %d KV groups and %d MLP channels of %d layers (fraction %.4f) in %d rounds, %s "
             "ranking (expected ratio %.4f)", plan["kv_groups_total"], plan["channels_total"],
             len(plan["candidates"]), plan["fraction"], plan["rounds"], cfg.ranking, plan["expected_ratio"])
    return {"unit": "width", "method": cfg.method, "target_ratio": cfg.target_ratio, "ranking": cfg.ranking,
            "num_layers": shape.layers, "params_total": shape.params_total, "protect_first": cfg.protect_first,
            "protect_last": cfg.protect_last, "shape": shape.width(), **plan}


PLANNERS = {"depth": _depth, "width": _width}


def plan(unit: str, cfg: Any, shape: ModelShape) -> dict[str, Any]:
    """The plan JSON of `unit` (`cfg`: a pipsteps.plan.PlanConfig with the protection resolved; `shape`: the dense
    model's, pipsteps.shape)."""
    if unit not in PLANNERS:
        raise PipError(f"unknown unit {unit!r}; allowed: {', '.join(PLANNERS)}")
    return PLANNERS[unit](cfg, shape)
