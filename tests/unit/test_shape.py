"""The dense model's shape read from its file headers (the plan step, torch-free) against the loaded model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pipsteps.errors import PipError
from pipsteps.shape import read_shape, shape_of
from pipsteps.tiny import FAMILIES, tiny_model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tied", [True, False])
def test_header_shape_is_the_loaded_models(tmp_path, family, tied):
    model = tiny_model(family, layers=3, heads=8, kv_heads=2)
    if not tied:  # a separate output head is counted; a tied one once
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.save_pretrained(tmp_path)
    shape = read_shape(tmp_path)
    assert shape == shape_of(model)
    hidden, vocab = 64, 512
    head_dim = getattr(model.config, "head_dim", None) or hidden // 8  # Qwen3 configs fix it (128)
    bias = family == "qwen2"  # q/k/v biases belong to their groups
    q_rows, kv_rows = 4 * head_dim, head_dim  # one KV group: 4 query heads and one KV head
    group = hidden * (q_rows + 2 * kv_rows) + (q_rows + 2 * kv_rows) * bias + q_rows * hidden
    assert shape.width() == {"layers": 3, "kv_heads": 2, "channels": 128, "kv_group_params": group,
                             "channel_params": 3 * hidden}
    embeddings = vocab * hidden * (1 if tied else 2)  # a tied head counted once, a separate one twice
    assert shape.params_total == sum(p.numel() for p in model.parameters())  # parameters() skips shared ones
    assert shape.params_total - 3 * shape.params_per_layer - hidden == embeddings  # minus layers and final norm


def test_sharded_weights_are_read_together(tmp_path):
    model = tiny_model("llama", layers=2)
    model.save_pretrained(tmp_path, max_shard_size="60KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    assert read_shape(tmp_path) == shape_of(model)


def test_not_a_model_directory_is_one_line(tmp_path):
    with pytest.raises(PipError, match="not a model directory"):
        read_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 2, "hidden_size": 8}))
    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(PipError, match="not a Llama/Qwen/Mistral decoder"):
        read_shape(tmp_path)
