"""Width pruning as a unit (pipsteps.units): whole KV groups with their query heads, and MLP channels, inside every
unprotected layer (the surgery: pipsteps.width).

Plan: pipsteps.unit_plans (so that the plan step does not import the scoring code). Score: the registry's formula
(pipsteps.methods) summed per group (pipsteps.width_scores). Select: `local` takes each type's planned count, lowest
first; `global` ranks both types together by score per parameter until the round's budget is spent; every layer
keeps one KV group and one channel. Apply: slice the groups out and record their original indices in the manifest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Sequence

from pipsteps import selection, unit_plans
from pipsteps.errors import PipError
from pipsteps.selection import RoundInputs
from pipsteps.shape import ModelShape
from pipsteps.width import prune_width
from pipsteps.width_scores import WidthScores, width_scores

log = logging.getLogger("pipsteps.unit_width")


def select_global(attn: Sequence[Sequence[float]], mlp: Sequence[Sequence[float]], attn_size: Sequence[int],
                  mlp_size: Sequence[int], budget: int, candidates: Sequence[int],
                  min_keep: int = 1) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Lowest normalised scores first over KV groups and channels together, until at least `budget` parameters
    are removed (WidthScores.values(kind, normalise=True) gives comparable scores). Returns (kv groups, channels)."""
    order = sorted([(s, 0, i, g) for i in candidates for g, s in enumerate(attn[i])] +
                   [(s, 1, i, g) for i in candidates for g, s in enumerate(mlp[i])])
    left = {(t, i): len((attn, mlp)[t][i]) for t in (0, 1) for i in candidates}
    out: tuple[dict[int, list[int]], dict[int, list[int]]] = (defaultdict(list), defaultdict(list))
    removed = 0
    for _, t, i, g in order:
        if removed >= budget:
            break
        if left[t, i] > min_keep:
            out[t][i].append(g)
            left[t, i] -= 1
            removed += (attn_size, mlp_size)[t][i]
    if removed < budget:
        raise PipError(f"cannot remove {budget} parameters by width pruning while keeping {min_keep} group per layer")
    return tuple({i: sorted(v) for i, v in sorted(d.items())} for d in out)  # type: ignore[return-value]


def kept_width(manifest: dict) -> list[dict[str, int]]:
    """Per kept layer: original index and the numbers of kept query heads, KV heads and MLP channels."""
    return [{"orig_index": o, "heads": len(e["kept_heads"]), "kv_heads": len(e["kept_kv_heads"]),
             "channels": len(e["kept_channels"])} for o, e in zip(manifest["kept_layers"], manifest["width"]["layers"])]


Removal = tuple[dict[int, list[int]], dict[int, list[int]]]  # (KV groups, MLP channels) {layer: [positions]}


class WidthUnit:
    name = "width"

    def plan(self, cfg: Any, shape: ModelShape) -> dict[str, Any]:
        return unit_plans.plan("width", cfg, shape)

    def score(self, model, name: str, cfg: Any, inputs: RoundInputs, plan: dict[str, Any]) -> WidthScores:
        return width_scores(model, name, *selection.grad_files("width", cfg, inputs.grads),
                            seed=selection.round_seed(inputs.seed, cfg.round))

    def select(self, model, scores: WidthScores, plan: dict[str, Any], round_: int) -> Removal:
        r, candidates = round_ - 1, plan["candidates"]
        if plan["ranking"] == "global":
            return select_global(scores.values("attn", normalise=True), scores.values("mlp", normalise=True),
                                 scores.attn_size, scores.mlp_size, plan["params_per_round"][r], candidates)
        return (selection.lowest(scores.values("attn"), plan["kv_groups_per_round"][r], candidates),
                selection.lowest(scores.values("mlp"), plan["channels_per_round"][r], candidates))

    def apply(self, model, manifest: dict, removal: Removal, scores: WidthScores, round_: int,
              label: str) -> dict[str, Any]:
        """Slice the groups out in place and record them (original indices) in the manifest; the round record's
        fields."""
        remove_kv, remove_ch = removal
        removed = prune_width(model, manifest, remove_kv, remove_ch)
        manifest["rounds"] = manifest["rounds"] + [{"round": round_, "removed_width": removed}]
        log.info("round %d (%s): removed %d KV groups in %d layers and %d MLP channels in %d layers", round_, label,
                 sum(map(len, remove_kv.values())), len(remove_kv), sum(map(len, remove_ch.values())),
                 len(remove_ch))
        orig = manifest["kept_layers"]
        return {"layer_scores": [{"index": i, "orig_index": o, "score": None} for i, o in enumerate(orig)],
                "group_scores": {"attn": scores.values("attn"), "mlp": scores.values("mlp")},
                "removed": [], "removed_groups": removed, "kept": kept_width(manifest),
                "removed_layers_so_far": manifest["removed_layers"], "layers_left": len(orig)}
