"""Physical pruning and the saved pruned-model format (METHOD.md §7).

A pruned model directory is a normal Hugging Face directory (safetensors, tokenizer, config) plus
`pruning_manifest.json`. Depth pruning keeps every layer's shape, so its config is a stock config with fewer
layers and plain `AutoModelForCausalLM.from_pretrained` loads it; `load_pruned` additionally checks the manifest
against the weights. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipsteps.io import PipError, atomic_path

log = logging.getLogger("pipsteps.surgery")
MANIFEST = "pruning_manifest.json"
FORMAT = "pipsteps-pruned/1"


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def remove_layers(model: nn.Module, remove: list[int]) -> None:
    """Delete decoder layers (current indices) in place; renumber `layer_idx` and update the config."""
    layers = decoder_layers(model)
    bad = [i for i in remove if not 0 <= i < len(layers)]
    if bad or len(set(remove)) != len(remove):
        raise PipError(f"invalid layer indices to remove: {remove} (model has {len(layers)} layers)")
    keep = [i for i in range(len(layers)) if i not in set(remove)]
    if not keep:
        raise PipError("refusing to remove every decoder layer")
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx  # else generate(use_cache=True) indexes the wrong cache slot
    cfg = model.config
    cfg.num_hidden_layers = len(keep)  # the model loops over layers[:num_hidden_layers]
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]


def new_manifest(num_layers: int, **info: Any) -> dict[str, Any]:
    return {"format": FORMAT, "base_num_hidden_layers": num_layers, "kept_layers": list(range(num_layers)),
            "removed_layers": [], "rounds": [], **info}


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / MANIFEST
    if not f.exists():
        n = json.loads((Path(path) / "config.json").read_text()).get("num_hidden_layers")
        return new_manifest(n)
    manifest = json.loads(f.read_text())
    if manifest.get("format") != FORMAT:
        raise PipError(f"{f}: unknown manifest format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def save_pruned(model: nn.Module, tokenizer: Any, out: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write safetensors + tokenizer + config + manifest into `out` atomically."""
    if len(manifest["kept_layers"]) != len(decoder_layers(model)):
        raise PipError("manifest does not match the model: kept_layers has "
                       f"{len(manifest['kept_layers'])} entries, model has {len(decoder_layers(model))} layers")
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_pruned(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                attn_implementation: str | None = None) -> nn.Module:
    """Load a model directory written by this project (dense or pruned) from safetensors only."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise PipError(f"not a model directory (no config.json): {path}")
    if not any(path.glob("*.safetensors")):
        raise PipError(f"no safetensors weights in {path}")
    manifest = read_manifest(path)
    n_config = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    if n_config != len(manifest["kept_layers"]):
        raise PipError(f"{path / MANIFEST} does not match the model: it keeps {len(manifest['kept_layers'])} layers, "
                       f"config.json has {n_config}")
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise PipError(f"could not load model from {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if len(decoder_layers(model)) != len(manifest["kept_layers"]):
        raise PipError(f"{path / MANIFEST} lists {len(manifest['kept_layers'])} kept layers but the weights have "
                       f"{len(decoder_layers(model))}")
    return model.to(device).eval()
