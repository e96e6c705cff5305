"""Depth pruning as a unit (pipsteps.units): whole decoder layers.

Plan: pipsteps.unit_plans (so that the plan step does not import the scoring code). Score: per layer, from the
registry's formula (pipsteps.methods) — gradient scores from the layer sums of the gradient files, forward-only
scores from the losses with each layer skipped, block influence from the dense model's JSON or recomputed on the
current model, random from seeded draws. Select: the round's lowest-scoring unprotected layers. Apply: remove them
and record their original indices in the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipsteps import methods, selection, unit_plans
from pipsteps.ablation import block_influence, skip_losses
from pipsteps.errors import PipError
from pipsteps.grads import load_ids
from pipsteps.files import read_json
from pipsteps.io import resolve_device
from pipsteps.scores import ablation_scores, depth_scores, layer_stats
from pipsteps.selection import RoundInputs
from pipsteps.shape import ModelShape
from pipsteps.surgery import decoder_layers, remove_layers

log = logging.getLogger("pipsteps.unit_depth")


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

    def plan(self, cfg: Any, shape: ModelShape) -> dict[str, Any]:
        return unit_plans.plan("depth", cfg, shape)

    def score(self, model, name: str, cfg: Any, inputs: RoundInputs, plan: dict[str, Any]) -> list[float | None]:
        n = len(decoder_layers(model))
        entry = methods.score("depth", cfg.method, cfg.score)  # the registry entry of `name`
        need = entry.needs
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
        if entry.kind == "random":
            return selection.random_scores(selection.round_seed(inputs.seed, cfg.round), [n])[0]
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
