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

Scores are in pipsteps.width_scores; planning in pipsteps.unit_plans (the shapes: pipsteps.shape); selection in
pipsteps.unit_width.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from pipsteps.errors import PipError

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
        gone = _removal(rm, n, "MLP channel")
        keep = [c for c in range(n) if c not in gone]
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
