"""Step (a Snakemake checkpoint): how many pruning rounds a variant needs, from the dense model and the config.

Depth: every decoder layer has the same size P_layer, so removing n layers removes n·P_layer of the total P.
n = the smallest count with n·P_layer ≥ target_ratio·P (never more than one layer past the target); rounds =
ceil(n / layers_per_round), the last round taking the remainder. One-shot methods do everything in one round.
Fails up front when the target cannot be reached with the unprotected layers.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps.io import PipError, count_params, load_model, write_json
from pipsteps.surgery import decoder_layers

log = logging.getLogger("pipsteps.plan")


@dataclass(frozen=True)
class PlanConfig:
    unit: str = field(default="depth", metadata={"help": "pruning unit (depth)"})
    method: str = field(default="pip", metadata={"help": "pruning method"})
    target_ratio: float = field(default=0.2, metadata={"help": "fraction of total parameters to remove"})
    layers_per_round: int = field(default=1, metadata={"help": "layers removed per round (depth)"})
    protect_first: int = field(default=0, metadata={"help": "first layers never removed"})
    protect_last: int = field(default=0, metadata={"help": "last layers never removed"})
    oneshot: bool = field(default=False, metadata={"help": "remove everything in a single round"})


def depth_plan(cfg: PlanConfig, n_layers: int, total: int, per_layer: int) -> dict[str, Any]:
    if not 0.0 < cfg.target_ratio < 1.0:
        raise PipError(f"prune.target_ratio must be in (0, 1), got {cfg.target_ratio}")
    n = math.ceil(cfg.target_ratio * total / per_layer - 1e-9)
    removable = n_layers - cfg.protect_first - cfg.protect_last
    if n > removable:
        raise PipError(f"target_ratio {cfg.target_ratio} is unreachable: it needs {n} of {n_layers} layers removed "
                       f"but only {removable} are unprotected (protect_first={cfg.protect_first}, "
                       f"protect_last={cfg.protect_last}); lower the ratio or protect fewer layers")
    k = n if cfg.oneshot else cfg.layers_per_round
    per_round = [k] * (n // k) + ([n % k] if n % k else [])
    return {"unit": "depth", "method": cfg.method, "target_ratio": cfg.target_ratio, "layers_to_remove": n,
            "rounds": len(per_round), "per_round": per_round, "num_layers": n_layers, "params_total": total,
            "params_per_layer": per_layer, "expected_ratio": n * per_layer / total,
            "protect_first": cfg.protect_first, "protect_last": cfg.protect_last}


def run(cfg: PlanConfig, model_dir: Path) -> dict[str, Any]:
    if cfg.unit != "depth":
        raise PipError(f"unit {cfg.unit!r} is not supported yet; allowed: depth")
    model = load_model(model_dir, device="cpu")
    layers = decoder_layers(model)
    per_layer = sum(p.numel() for p in layers[0].parameters())
    plan = depth_plan(cfg, len(layers), count_params(model)["total"], per_layer)
    log.info("plan: remove %d of %d layers in %d rounds (expected ratio %.4f)", plan["layers_to_remove"],
             plan["num_layers"], plan["rounds"], plan["expected_ratio"])
    return plan


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="dense model directory")
        p.add_argument("--out", required=True, type=Path, help="output plan JSON")

    cfg, ns = cli.parse(PlanConfig, argv, __doc__.splitlines()[0], extra)
    write_json(ns.out, {"config": asdict(cfg), **run(cfg, ns.model)})


if __name__ == "__main__":
    cli.main_wrapper(main)
