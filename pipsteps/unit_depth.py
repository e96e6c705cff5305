"""Depth pruning as a unit (pipsteps.units): whole decoder layers.

Plan: every decoder layer has the same size P_layer, so removing n layers removes n·P_layer of the total P; n is the
smallest count with n·P_layer ≥ target_ratio·P (never more than one layer past the target), removed
`layers_per_round` at a time (the last round takes the remainder; one-shot methods: all in round 1).
Score: per layer, from the registry's formula (pipsteps.methods) — gradient scores from the layer sums of the
gradient files, forward-only scores from the losses with each layer skipped, block influence from the dense model's
JSON or recomputed on the current model, random from seeded draws. Select: the round's lowest-scoring unprotected
layers. Apply: remove them and record their original indices in the manifest.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from pipsteps import methods, selection
from pipsteps.ablation import block_influence, skip_losses
from pipsteps.errors import PipError
from pipsteps.grads import load_ids
from pipsteps.io import read_json, resolve_device
from pipsteps.scores import ablation_scores, depth_scores, layer_stats
from pipsteps.selection import RoundInputs
from pipsteps.surgery import decoder_layers, remove_layers

log = logging.getLogger("pipsteps.unit_depth")


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


def forward_scores(name: str, model, cfg: Any, calib: dict[str, Path | None], views: tuple[str, ...],
                   candidates: list[int]) -> list[float | None]:
    """Forward-only scores on the current model from the calibration `views` the score reads: block influence, or
    an ablation score (sleb, gap_…). The model goes to cfg.device and back to the CPU."""
    missing = [v for v in views if calib.get(v) is None]
    if missing:
        raise PipError(f"{cfg.method} ({name}) needs the {' and '.join(missing)} calibration view(s) (--calib-…)")
    model.to(resolve_device(cfg.device, require_gpu=cfg.require_gpu))
    try:
        if methods.SCORES[name].kind == "influence":
            return block_influence(model, load_ids(calib["clean"]), cfg.micro_batch)[0]
        full, skipped = {}, {}
        for v in views:
            full[v], skipped[v] = skip_losses(model, load_ids(calib[v]), candidates, cfg.micro_batch,
                                              desc=f"skip {v}")
        log.info("calibration loss %s; with each candidate layer skipped: %s", full, skipped)
        return ablation_scores(name, full, skipped, len(decoder_layers(model)))
    finally:
        model.to("cpu")


class DepthUnit:
    name = "depth"

    def plan(self, cfg: Any, model, total: int) -> dict[str, Any]:
        layers = decoder_layers(model)
        plan = depth_plan(cfg, len(layers), total, sum(p.numel() for p in layers[0].parameters()))
        log.info("plan: remove %d of %d layers in %d rounds (expected ratio %.4f)", plan["layers_to_remove"],
                 plan["num_layers"], plan["rounds"], plan["expected_ratio"])
        return plan

    def score(self, model, name: str, cfg: Any, inputs: RoundInputs, plan: dict[str, Any]) -> list[float | None]:
        n = len(decoder_layers(model))
        kind, need = methods.SCORES[name].kind, methods.needs("depth", cfg.method, cfg.score)
        if need.influence:  # the dense model's block influence, computed once
            if inputs.influence is None:
                raise PipError("method 'block_influence' needs the block influence JSON (--influence)")
            scores = read_json(inputs.influence)["scores"]
            if len(scores) != n:
                raise PipError(f"{inputs.influence} scores {len(scores)} layers, the model has {n}: it was computed "
                               "on another model (block influence is one-shot, from the dense model)")
            return scores
        if need.calib:  # forward passes on the current model: ablation, or block influence every round
            return forward_scores(name, model, cfg, inputs.calib, need.calib, self.candidates(model, plan))
        if kind == "random":
            gen = torch.Generator().manual_seed(selection.round_seed(inputs.seed, cfg.round))
            return selection.random_scores(gen, n)
        return depth_scores(name, layer_stats(model, *selection.grad_files("depth", cfg, inputs.grads)))

    @staticmethod
    def candidates(model, plan: dict[str, Any]) -> list[int]:
        return selection.candidates(len(decoder_layers(model)), plan["protect_first"], plan["protect_last"])

    def select(self, model, scores: list[float | None], plan: dict[str, Any], round_: int) -> list[int]:
        """The round's k lowest-scoring unprotected layers (ties: lower index first)."""
        rows = [[s] for s in scores]
        return sorted(selection.lowest(rows, plan["per_round"][round_ - 1], self.candidates(model, plan), 0))

    def apply(self, model, manifest: dict, remove: list[int], scores: list[float | None], round_: int,
              label: str) -> dict[str, Any]:
        """Remove the layers in place and record them (original indices) in the manifest; the round record's
        layer fields."""
        n = len(decoder_layers(model))
        orig = manifest["kept_layers"]
        removed_orig = [orig[i] for i in remove]
        remove_layers(model, remove)
        manifest.update(kept_layers=[i for i in orig if i not in removed_orig],
                        removed_layers=manifest["removed_layers"] + removed_orig)
        manifest["rounds"] = manifest["rounds"] + [
            {"round": round_, "removed": removed_orig,
             "scores": {str(orig[i]): s for i, s in enumerate(scores) if s is not None}}]
        log.info("round %d (%s): removed layer(s) %s (original index), %d layers left", round_, label,
                 removed_orig, n - len(remove))
        return {"layer_scores": [{"index": i, "orig_index": orig[i], "score": scores[i]} for i in range(n)],
                "removed": [{"index": i, "orig_index": o} for i, o in zip(remove, removed_orig)],
                "removed_layers_so_far": manifest["removed_layers"], "layers_left": n - len(remove)}
