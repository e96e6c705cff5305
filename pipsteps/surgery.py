"""Physical pruning and the saved pruned-model format (docs/usage.md).

A pruned model directory is a normal Hugging Face directory (safetensors, tokenizer, config) plus
`pruning_manifest.json`. Depth pruning keeps every layer's shape, so its config is a stock config with fewer
layers and plain `AutoModelForCausalLM.from_pretrained` loads it; `load_pruned` additionally checks the manifest
against the weights. Nothing is ever unpickled.

Width pruning (pipsteps.width) adds a `width` entry to the manifest: the original shapes (`base`) and, per kept
layer, the original indices of the kept query heads, KV heads and MLP channels. When every layer has the same
shape and the config class accepts it, config.json is a stock config with those shapes (`"config": "stock"`);
otherwise it is the original config (`"config": "base"`) and only `load_pruned` can rebuild the model: it builds it
from the config on the meta device, slices it per the manifest and loads the safetensors strictly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipsteps.errors import PipError
from pipsteps.files import atomic_path, read_json
from pipsteps.io import open_safetensors
from pipsteps.width import apply_manifest, check_shapes, saved_config

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
    """The model directory's manifest (a fresh one for a plain model directory), checked: a truncated file or one
    that lists layers the base model does not have is a one-line error naming the file."""
    f = Path(path) / MANIFEST
    if not f.exists():
        return new_manifest(read_json(Path(path) / "config.json").get("num_hidden_layers"))
    manifest = read_json(f)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PipError(f"{f}: unknown manifest format {found!r} (expected {FORMAT})")
    check_layers(manifest, f)
    return manifest


def check_layers(manifest: dict[str, Any], where: str | os.PathLike) -> None:
    """kept_layers and removed_layers are distinct indices of the base model's layers (base_num_hidden_layers)."""
    base, kept, removed = (manifest.get(k) for k in ("base_num_hidden_layers", "kept_layers", "removed_layers"))
    lists = (kept, removed)
    if (not _is_int(base) or base < 1 or not all(isinstance(x, list) for x in lists)
            or not all(_is_int(i) for x in lists for i in x)):
        raise PipError(f"{where}: base_num_hidden_layers must be a layer count and kept_layers/removed_layers lists "
                       "of layer indices")
    outside = sorted({i for i in kept + removed if not 0 <= i < base})
    if outside:
        raise PipError(f"{where} lists layer(s) {outside} outside the base model, which has {base} layers "
                       f"(0..{base - 1}): it belongs to another model")
    twice = sorted({i for i in kept + removed if (kept + removed).count(i) > 1})
    if twice:
        raise PipError(f"{where} lists layer(s) {twice} more than once in kept_layers/removed_layers")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def save_pruned(model: nn.Module, tokenizer: Any, out: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write safetensors + tokenizer + config + manifest into `out` atomically."""
    if len(manifest["kept_layers"]) != len(decoder_layers(model)):
        raise PipError("manifest does not match the model: kept_layers has "
                       f"{len(manifest['kept_layers'])} entries, model has {len(decoder_layers(model))} layers")
    if "width" in manifest:
        check_shapes(model, manifest["width"])
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        if "width" in manifest:  # replace the in-memory config: stock shapes, or the original ones + manifest
            config, kind = saved_config(model.config, manifest["width"])
            config.save_pretrained(tmp)
            manifest = {**manifest, "config": kind}
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(_dumps(manifest))


def _dumps(manifest: dict[str, Any]) -> str:
    """Indented JSON with every list of integers on one line (kept channels run into the thousands)."""
    text = json.dumps(manifest, indent=2)
    return re.sub(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def load_pruned(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                attn_implementation: str | None = None, device_map: str | dict | None = None) -> nn.Module:
    """Load a model directory written by this project (dense or pruned) from safetensors only.

    With `device_map` (passed to from_pretrained: "auto", "balanced", "sequential" or a dict), accelerate places
    the layers over the available devices and `device` is not used."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise PipError(f"not a model directory (no config.json): {path}")
    if not any(path.glob("*.safetensors")):
        raise PipError(f"no safetensors weights in {path}")
    manifest = read_manifest(path)
    n_config = read_json(path / "config.json").get("num_hidden_layers")
    if n_config != len(manifest["kept_layers"]):
        raise PipError(f"{path / MANIFEST} does not match the model: it keeps {len(manifest['kept_layers'])} layers, "
                       f"config.json has {n_config}")
    if "width" in manifest:
        return _load_width(path, manifest, device, dtype, attn_implementation, device_map)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise PipError(f"could not load model from {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if len(decoder_layers(model)) != len(manifest["kept_layers"]):
        raise PipError(f"{path / MANIFEST} lists {len(manifest['kept_layers'])} kept layers but the weights have "
                       f"{len(decoder_layers(model))}")
    return (model if device_map is not None else model.to(device)).eval()


def load_model(path: str | os.PathLike, device: torch.device, dtype: torch.dtype | None = None,
               device_map: str | None = None):
    """Load a (possibly pruned) model directory written by this project. Never unpickles.

    `device_map` (auto, balanced, sequential, …) shards the layers over the GPUs of the node instead of putting
    the whole model on `device`; it is ignored, with a warning, when `device` is the CPU.
    """
    if device_map and torch.device(device).type != "cuda":
        log.warning("compute.device_map=%s ignored: the model runs on the CPU", device_map)
        device_map = None
    return load_pruned(path, device=device, dtype=dtype, device_map=device_map)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _load_width(path: Path, manifest: dict[str, Any], device: torch.device | str, dtype: torch.dtype | None,
                attn_implementation: str | None, device_map: str | dict | None) -> nn.Module:
    """Width-pruned weights: build the model from config.json on the meta device, slice it to the manifest's
    per-layer shapes, load the safetensors strictly (tied weights re-tied) and check that nothing stayed empty."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with init_empty_weights(include_buffers=False):  # buffers (rotary inv_freq) are computed for real
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    except Exception as e:
        raise PipError(f"could not build a model from {path / 'config.json'}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0]}") from None
    try:
        apply_manifest(model, manifest["width"])
    except PipError as e:
        raise PipError(f"{path / MANIFEST} does not match {path / 'config.json'}: {e}") from None
    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        with open_safetensors(f) as st:  # a truncated or corrupted file: one line naming it
            state.update({k: st.get_tensor(k) for k in st.keys()})
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # size mismatch
        raise PipError(f"{path / MANIFEST} does not match the weights: {str(e).splitlines()[-1].strip()}") from None
    missing = sorted(set(missing) - set(getattr(model, "all_tied_weights_keys", None) or {}))
    if missing or unexpected:
        raise PipError(f"{path / MANIFEST} does not match the weights: missing {missing[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    if dtype is not None:
        model.config.dtype = dtype
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty:
        raise PipError(f"{path}: no weights for {empty[:3]}")
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    if device_map is None:
        return model.to(device).eval()
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map).eval()
