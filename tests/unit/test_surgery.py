"""Layer removal equals skipping the layer; KV-cache generation; save → from_pretrained round trip."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipsteps.io import PipError
from pipsteps.surgery import MANIFEST, load_pruned, new_manifest, remove_layers, save_pruned
from pipsteps.tiny import FAMILIES, tiny_model, tiny_tokenizer

IDS = torch.randint(4, 512, (2, 24), generator=torch.Generator().manual_seed(0))


def skip_hooks(model, skip):
    """Oracle: the original model with the given layers bypassed (output := input hidden states)."""
    def bypass(module, args, kwargs, output):
        return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    return [model.model.layers[i].register_forward_hook(bypass, with_kwargs=True) for i in skip]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_removed_layers_equal_skipped_layers(family, attn):
    model = tiny_model(family, attn=attn, seed=1)
    skip = [1, 4]
    hooks = skip_hooks(model, skip)
    with torch.no_grad():
        oracle = model(IDS).logits
        oracle_gen = model.generate(IDS[:1, :8], max_new_tokens=8, do_sample=False, use_cache=True)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        dense = model(IDS).logits
    assert (dense - oracle).abs().max() > 1e-3  # the skipped layers really matter
    remove_layers(model, skip)
    assert model.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    with torch.no_grad():
        pruned = model(IDS).logits
        gen = model.generate(IDS[:1, :8], max_new_tokens=8, do_sample=False, use_cache=True)
    assert (pruned - oracle).abs().max().item() <= 1e-5
    assert torch.equal(gen, oracle_gen)


def test_save_then_from_pretrained_round_trip_is_exact(tmp_path):
    model = tiny_model("qwen2", seed=2)
    remove_layers(model, [0, 3])
    manifest = new_manifest(6)
    manifest.update(kept_layers=[1, 2, 4, 5], removed_layers=[0, 3])
    save_pruned(model, tiny_tokenizer(), tmp_path / "m", manifest)
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["removed_layers"] == [0, 3]
    assert not list(tmp_path.glob(".*partial"))  # no temporary leftovers
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ours = load_pruned(tmp_path / "m")
    with torch.no_grad():
        ref = model(IDS).logits
        assert torch.equal(plain(IDS).logits, ref)
        assert torch.equal(ours(IDS).logits, ref)
    assert plain.config.num_hidden_layers == 4


def test_manifest_mismatch_is_refused(tmp_path):
    model = tiny_model("llama")
    remove_layers(model, [2])
    manifest = new_manifest(6)  # still claims 6 kept layers
    with pytest.raises(PipError, match="manifest does not match"):
        save_pruned(model, tiny_tokenizer(), tmp_path / "m", manifest)
    assert not (tmp_path / "m").exists()


def test_invalid_indices_are_refused():
    model = tiny_model("llama")
    with pytest.raises(PipError, match="invalid layer indices"):
        remove_layers(model, [6])
    with pytest.raises(PipError, match="every decoder layer"):
        remove_layers(model, list(range(6)))
