"""The dense model's shape, the only thing a round plan needs: layer count, parameter counts and the size of one KV
group and one MLP channel. Torch-free: `read_shape` reads the safetensors headers and config.json of a model
directory (milliseconds and no memory, even for a 70B model), `shape_of` measures a loaded model; the two agree
(tests/unit/test_shape.py), so the plan step never loads weights.

Every decoder layer of a dense model has the shape of layer 0. A KV group is one KV head with its query heads: its
rows of q/k/v (and their biases) and its columns of o_proj; an MLP channel is one row of gate/up (and their
biases) and one column of down_proj.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipsteps.errors import PipError

ATTN = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class ModelShape:
    layers: int
    params_total: int  # tied weights counted once
    params_per_layer: int
    kv_heads: int
    channels: int
    kv_group_params: int
    channel_params: int

    def width(self) -> dict[str, int]:
        """The shape arguments of pipsteps.unit_plans.plan_width."""
        return {"layers": self.layers, "kv_heads": self.kv_heads, "channels": self.channels,
                "kv_group_params": self.kv_group_params, "channel_params": self.channel_params}


def _attn_params(name: str) -> bool:
    """q/k/v rows with their biases, and o_proj's weight (its bias belongs to no group)."""
    return name.split(".")[0] in ATTN or name == "o_proj.weight"


def _mlp_params(name: str) -> bool:
    return name != "down_proj.bias"


def _shape(layers: int, total: int, layer0: dict[str, int], kv_rows: int, channels: int, head_dim: int
           ) -> ModelShape:
    """`layer0`: {parameter name inside the layer: numel}."""
    n_kv = kv_rows // head_dim
    attn = sum(n for k, n in layer0.items() if k.startswith("self_attn.") and _attn_params(k[len("self_attn."):]))
    mlp = sum(n for k, n in layer0.items() if k.startswith("mlp.") and _mlp_params(k[len("mlp."):]))
    return ModelShape(layers=layers, params_total=total, params_per_layer=sum(layer0.values()), kv_heads=n_kv,
                      channels=channels, kv_group_params=attn // n_kv, channel_params=mlp // channels)


def shape_of(model: Any) -> ModelShape:
    """The shape of a loaded (dense) Hugging Face decoder model."""
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    layers = model.model.layers
    attn = layers[0].self_attn
    layer0 = {k: p.numel() for k, p in layers[0].named_parameters()}
    return _shape(len(layers), total, layer0, attn.k_proj.out_features, layers[0].mlp.gate_proj.out_features,
                  attn.head_dim)


def read_shape(model_dir: str | Path) -> ModelShape:
    """The shape of the dense model saved in `model_dir` (config.json and *.safetensors), without loading it.
    save_pretrained writes a tied head once (as the embedding), so the files' tensors are the parameters."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    config_file = model_dir / "config.json"
    if not files or not config_file.is_file():
        raise PipError(f"{model_dir}: not a model directory (needs config.json and *.safetensors weights)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    shapes: dict[str, list[int]] = {}
    for f in files:
        with safe_open(f, framework="numpy") as st:
            shapes.update({key: st.get_slice(key).get_shape() for key in st.keys()})
    per_layer: dict[int, dict[str, int]] = {}
    for key, shape in shapes.items():
        if m := re.match(r"model\.layers\.(\d+)\.(.+)$", key):
            per_layer.setdefault(int(m.group(1)), {})[m.group(2)] = math.prod(shape)
    needed = ("self_attn.k_proj.weight", "mlp.gate_proj.weight")
    if sorted(per_layer) != list(range(len(per_layer))) or not all(k in per_layer.get(0, {}) for k in needed):
        raise PipError(f"{model_dir}: its weights are not a Llama/Qwen/Mistral decoder (model.layers.0..N-1 with "
                       "self_attn.k_proj and mlp.gate_proj)")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return _shape(len(per_layer), sum(math.prod(v) for v in shapes.values()), per_layer[0],
                  shapes["model.layers.0.self_attn.k_proj.weight"][0],
                  shapes["model.layers.0.mlp.gate_proj.weight"][0], head_dim)
