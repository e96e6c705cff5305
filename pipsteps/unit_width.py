"""Width pruning as a unit (pipsteps.units): whole KV groups with their query heads, and MLP channels, inside every
unprotected layer (the surgery: pipsteps.width).

Plan (`plan_width`): the same fraction f of the KV groups and of the MLP channels of the unprotected layers goes, so
that target_ratio of the total parameters go, spread evenly over `rounds` rounds (one-shot methods: 1); `global`
ranking gets the matching parameter budget per round. Score: the registry's formula (pipsteps.methods) summed per
group (pipsteps.width_scores). Select: `local` takes each type's planned count, lowest first; `global` ranks both
types together by score per parameter until the round's budget is spent; every layer keeps one KV group and one
channel. Apply: slice the groups out and record their original indices in the manifest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Sequence

from pipsteps import selection
from pipsteps.errors import PipError
from pipsteps.selection import RoundInputs
from pipsteps.surgery import decoder_layers
from pipsteps.width import prune_width, width_shape
from pipsteps.width_scores import WidthScores, width_scores

log = logging.getLogger("pipsteps.unit_width")


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

    def plan(self, cfg: Any, model, total: int) -> dict[str, Any]:
        shape = width_shape(model)
        plan = plan_width(**shape, params_total=total, target_ratio=cfg.target_ratio,
                          rounds=1 if cfg.oneshot else cfg.rounds, protect_first=cfg.protect_first,
                          protect_last=cfg.protect_last)
        log.info("plan: remove %d KV groups and %d MLP channels of %d layers (fraction %.4f) in %d rounds, %s "
                 "ranking (expected ratio %.4f)", plan["kv_groups_total"], plan["channels_total"],
                 len(plan["candidates"]), plan["fraction"], plan["rounds"], cfg.ranking, plan["expected_ratio"])
        return {"unit": "width", "method": cfg.method, "target_ratio": cfg.target_ratio, "ranking": cfg.ranking,
                "num_layers": len(decoder_layers(model)), "params_total": total, "protect_first": cfg.protect_first,
                "protect_last": cfg.protect_last, "shape": shape, **plan}

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
