"""Width pruning (docs/methods.md): whole KV groups with their query heads, and MLP intermediate channels.

Structures, per decoder layer (shapes may differ from layer to layer):

    attention group g = KV head g with its n_q/n_kv query heads: q/k/v rows (+ biases) and o_proj columns
    MLP channel c     = gate/up row c (+ biases) and down_proj column c

Every kept KV group keeps the same number of query heads (both `repeat_kv` and SDPA's `enable_gqa` need that).
The attention forward of transformers 5.x takes its shapes from the weights and reads only `head_dim` and
`num_key_value_groups` from the module, so slicing the Linear layers and setting `num_key_value_groups` is the
whole surgery. Qwen3's q_norm/k_norm act on the head dimension, shared by all heads: nothing to slice. The config
keeps the original shapes; the per-layer shapes are in the manifest's `width` entry (pipsteps.surgery), with the
*original* indices of the kept heads and channels.

Scores are in pipsteps.width_scores. `plan_width` turns a target ratio into per-round group counts (and refuses
ratios that would empty a layer); `select_local` / `select_global` pick the lowest-scoring groups.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter, defaultdict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pipsteps.io import PipError

log = logging.getLogger("pipsteps.width")


# ---------------------------------------------------------------- slicing
def _slice_linear(lin: nn.Linear, keep: Sequence[int], dim: int) -> None:
    idx = torch.tensor(list(keep), dtype=torch.long, device=lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.data.index_select(dim, idx), requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.data.index_select(0, idx), requires_grad=lin.bias.requires_grad)
        lin.out_features = len(keep)
    else:
        lin.in_features = len(keep)


def _rows(heads: Sequence[int], dim: int) -> list[int]:
    return [h * dim + j for h in heads for j in range(dim)]


def _check_index(keep: Sequence[int], n: int, what: str) -> None:
    if not keep:
        raise PipError(f"refusing to remove every {what} of a layer")
    if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
        raise PipError(f"invalid {what} to keep: {list(keep)} (the layer has {n})")


def attn_shape(attn: nn.Module) -> tuple[int, int]:
    """(query heads, KV heads) of an attention module, read from its weights."""
    return attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim


def slice_attention(attn: nn.Module, kept_q: Sequence[int], kept_kv: Sequence[int]) -> None:
    """Keep query heads `kept_q` and KV heads `kept_kv` (current positions, ascending) of one attention module."""
    n_q, n_kv = attn_shape(attn)
    _check_index(kept_q, n_q, "query head")
    _check_index(kept_kv, n_kv, "KV head")
    per_group = Counter(h // (n_q // n_kv) for h in kept_q)
    if sorted(per_group) != list(kept_kv) or len(set(per_group.values())) != 1:
        raise PipError(f"kept query heads {list(kept_q)} do not fill the kept KV groups {list(kept_kv)} equally "
                       f"({n_q // n_kv} query heads per KV head)")
    hd = attn.head_dim
    _slice_linear(attn.q_proj, _rows(kept_q, hd), 0)
    _slice_linear(attn.k_proj, _rows(kept_kv, hd), 0)
    _slice_linear(attn.v_proj, _rows(kept_kv, hd), 0)
    _slice_linear(attn.o_proj, _rows(kept_q, hd), 1)
    attn.num_key_value_groups = len(kept_q) // len(kept_kv)  # read by repeat_kv / sdpa enable_gqa


def slice_mlp(mlp: nn.Module, kept: Sequence[int]) -> None:
    """Keep intermediate channels `kept` (current positions, ascending) of one gated MLP."""
    _check_index(kept, mlp.gate_proj.out_features, "MLP channel")
    _slice_linear(mlp.gate_proj, kept, 0)
    _slice_linear(mlp.up_proj, kept, 0)
    _slice_linear(mlp.down_proj, kept, 1)
    mlp.intermediate_size = len(kept)


# ---------------------------------------------------------------- manifest entry and shapes
def base_shape(config: Any) -> dict[str, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
            "head_dim": head_dim, "intermediate_size": config.intermediate_size}


def full_width(base: dict[str, int], n_layers: int) -> dict[str, Any]:
    """The manifest `width` entry of an unpruned model: every head and channel kept in every layer."""
    entry = {"kept_heads": list(range(base["num_attention_heads"])),
             "kept_kv_heads": list(range(base["num_key_value_heads"])),
             "kept_channels": list(range(base["intermediate_size"]))}
    return {"base": dict(base), "layers": [copy.deepcopy(entry) for _ in range(n_layers)]}


def layer_shapes(model: nn.Module) -> list[tuple[int, int, int]]:
    """(query heads, KV heads, MLP channels) of every decoder layer, read from the weights."""
    return [(*attn_shape(layer.self_attn), layer.mlp.gate_proj.out_features) for layer in model.model.layers]


def manifest_shapes(width: dict[str, Any]) -> list[tuple[int, int, int]]:
    return [(len(e["kept_heads"]), len(e["kept_kv_heads"]), len(e["kept_channels"])) for e in width["layers"]]


def check_shapes(model: nn.Module, width: dict[str, Any]) -> None:
    """PipError unless the model's per-layer shapes are the ones the manifest's width entry describes."""
    have, want = layer_shapes(model), manifest_shapes(width)
    if len(have) != len(want):
        raise PipError(f"manifest does not match the model: width entry has {len(want)} layers, model has {len(have)}")
    for i, (h, w) in enumerate(zip(have, want)):
        if h != w:
            raise PipError(f"manifest does not match the model: layer {i} has (heads, KV heads, channels) = {h}, "
                           f"the manifest keeps {w}")


def apply_manifest(model: nn.Module, width: dict[str, Any]) -> None:
    """Slice a model built from a saved config to the manifest's shapes. Layers built at the base shape are sliced
    with the kept original indices; layers that already have the kept shape (a stock config) are left alone."""
    base = width["base"]
    full = (base["num_attention_heads"], base["num_key_value_heads"], base["intermediate_size"])
    for layer, entry, have in zip(model.model.layers, width["layers"], layer_shapes(model)):
        if have[:2] == full[:2]:
            slice_attention(layer.self_attn, entry["kept_heads"], entry["kept_kv_heads"])
        if have[2] == full[2]:
            slice_mlp(layer.mlp, entry["kept_channels"])
    check_shapes(model, width)


def _removal(rm: Sequence[int], n: int, what: str) -> set[int]:
    if len(set(rm)) != len(rm) or any(not 0 <= x < n for x in rm):
        raise PipError(f"invalid {what} positions to remove: {sorted(rm)} (the layer has {n})")
    return set(rm)


def prune_width(model: nn.Module, manifest: dict[str, Any], remove_kv: Mapping[int, Sequence[int]],
                remove_channels: Mapping[int, Sequence[int]],
                remove_q: Mapping[int, Sequence[int]] | None = None) -> dict[str, dict[int, list[int]]]:
    """Remove whole KV groups (with their query heads), MLP channels and, optionally, single query heads (as many
    from every kept group) in place. Keys are current layer indices, values current positions in that layer.
    Updates manifest["width"] (created on first use) and returns what was removed as original indices keyed by
    original layer index."""
    layers, remove_q = model.model.layers, remove_q or {}
    width = manifest.setdefault("width", full_width(base_shape(model.config), len(layers)))
    check_shapes(model, width)
    orig_layer = manifest.get("kept_layers", list(range(len(layers))))
    removed: dict[str, dict[int, list[int]]] = {"kv_heads": {}, "heads": {}, "channels": {}}
    for i in sorted({*remove_kv, *remove_q}):
        entry, (n_q, n_kv) = width["layers"][i], attn_shape(layers[i].self_attn)
        rm_kv = _removal(remove_kv.get(i, ()), n_kv, "KV head")
        rm_q = _removal(remove_q.get(i, ()), n_q, "query head")
        keep_kv = [g for g in range(n_kv) if g not in rm_kv]
        keep_q = [h for h in range(n_q) if h // (n_q // n_kv) in keep_kv and h not in rm_q]
        slice_attention(layers[i].self_attn, keep_q, keep_kv)
        for key, gone in (("kv_heads", [entry["kept_kv_heads"][g] for g in sorted(rm_kv)]),
                          ("heads", [entry["kept_heads"][h] for h in range(n_q) if h not in keep_q])):
            if gone:
                removed[key][orig_layer[i]] = gone
        entry["kept_kv_heads"] = [entry["kept_kv_heads"][g] for g in keep_kv]
        entry["kept_heads"] = [entry["kept_heads"][h] for h in keep_q]
    for i, rm in sorted(remove_channels.items()):
        entry = width["layers"][i]
        n = layers[i].mlp.gate_proj.out_features
        keep = [c for c in range(n) if c not in _removal(rm, n, "MLP channel")]
        slice_mlp(layers[i].mlp, keep)
        removed["channels"][orig_layer[i]] = [entry["kept_channels"][c] for c in sorted(rm)]
        entry["kept_channels"] = [entry["kept_channels"][c] for c in keep]
    return removed


def saved_config(config: Any, width: dict[str, Any]) -> tuple[Any, str]:
    """The config to write beside width-pruned weights: a stock config when every layer has the same shape and
    the config class accepts it ("stock"), else the config at the original shapes ("base") + the manifest."""
    base, shapes = width["base"], set(manifest_shapes(width))
    d = config.to_dict()
    if len(shapes) == 1:
        heads, kv, channels = shapes.pop()
        try:
            return type(config).from_dict({**d, "num_attention_heads": heads, "num_key_value_heads": kv,
                                           "intermediate_size": channels, "head_dim": base["head_dim"]}), "stock"
        except Exception as e:  # e.g. LlamaConfig: hidden_size % num_attention_heads != 0
            log.info("uniform width but %s rejects it (%s): saving the original config + manifest",
                     type(config).__name__, str(e).splitlines()[-1].strip())
    return type(config).from_dict({**d, **base}), "base"


# ---------------------------------------------------------------- planning and selection
def width_shape(model: nn.Module) -> dict[str, int]:
    """What `plan_width` needs, read from layer 0 of an unpruned model (every layer has that shape)."""
    layer = model.model.layers[0]
    n_q, n_kv = attn_shape(layer.self_attn)
    channels = layer.mlp.gate_proj.out_features
    attn = sum(p.numel() for n, p in layer.self_attn.named_parameters()
               if n.split(".")[0] in ("q_proj", "k_proj", "v_proj") or n == "o_proj.weight")
    mlp = sum(p.numel() for n, p in layer.mlp.named_parameters() if n != "down_proj.bias")
    return {"layers": len(model.model.layers), "kv_heads": n_kv, "channels": channels,
            "kv_group_params": attn // n_kv, "channel_params": mlp // channels}


def _split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (r < total % rounds) for r in range(rounds)]


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
    candidates = list(range(protect_first, layers - protect_last))
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
    attn_rounds, mlp_rounds = _split(attn_total, rounds), _split(mlp_total, rounds)
    removed = attn_total * kv_group_params + mlp_total * channel_params
    return {"candidates": candidates, "fraction": f, "rounds": rounds, "kv_groups_total": attn_total,
            "channels_total": mlp_total, "kv_groups_per_round": attn_rounds, "channels_per_round": mlp_rounds,
            "params_per_round": [a * kv_group_params + m * channel_params for a, m in zip(attn_rounds, mlp_rounds)],
            "expected_removed_params": removed, "expected_ratio": removed / params_total}


def select_local(scores: Sequence[Sequence[float]], k: int, candidates: Sequence[int],
                 min_keep: int = 1) -> dict[int, list[int]]:
    """The k lowest-scoring groups of one type over the candidate layers (ties: lower layer, then lower index),
    never leaving a layer with fewer than `min_keep`. Returns {layer: [positions]}."""
    order = sorted((s, i, g) for i in candidates for g, s in enumerate(scores[i]))
    left = {i: len(scores[i]) for i in candidates}
    out: dict[int, list[int]] = defaultdict(list)
    taken = 0
    for _, i, g in order:
        if taken == k:
            break
        if left[i] > min_keep:
            out[i].append(g)
            left[i] -= 1
            taken += 1
    if taken < k:
        raise PipError(f"cannot remove {k} groups: only {taken} can go while keeping {min_keep} per layer")
    return {i: sorted(v) for i, v in sorted(out.items())}


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
