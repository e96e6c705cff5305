"""Width surgery equals the masked original (every family × sdpa/eager × uniform/heterogeneous/KV-group removal),
KV-cache generation, exact save/load round trips, scores against a hand computation, selection and planning."""

import copy
import functools
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from pipsteps.io import PipError
from pipsteps.surgery import MANIFEST, load_pruned, new_manifest, save_pruned
from pipsteps.tiny import FAMILIES, tiny_model, tiny_tokenizer
from pipsteps.selection import lowest as select_local
from pipsteps.unit_plans import plan_width
from pipsteps.unit_width import select_global
from pipsteps.shape import shape_of
from pipsteps.width import prune_width, slice_attention
from pipsteps.width_scores import NEEDS, width_scores

IDS = torch.randint(4, 512, (2, 24), generator=torch.Generator().manual_seed(0))
# tiny models: 6 layers, 4 query heads in 2 KV groups (2 query heads per group), 128 MLP channels
CASES = {
    # every layer loses one KV group (with its 2 query heads) and 32 channels: one shape everywhere
    "uniform": ({i: [i % 2] for i in range(6)}, {i: list(range(i % 4, 128, 4)) for i in range(6)}, {}),
    # per-layer shapes: one query head per group in layer 0, a KV group in layer 1, channel counts all different
    "heterogeneous": ({1: [0], 4: [1]}, {0: [0, 127], 1: list(range(0, 128, 3)), 3: list(range(64)), 5: [7]},
                      {0: [1, 3], 5: [0, 2]}),
    # whole KV groups only
    "kv_groups": ({0: [1], 2: [0], 3: [1], 5: [0]}, {}, {}),
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def masked_oracle(model, remove_kv, remove_channels, remove_q):
    """The original model with the removed heads' o_proj input columns and the removed channels' down_proj input
    columns zeroed: their contributions vanish, everything else is computed as before."""
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn, hd = layer.self_attn, layer.self_attn.head_dim
            rep = attn.num_key_value_groups
            heads = {h for g in remove_kv.get(i, ()) for h in range(g * rep, (g + 1) * rep)} | set(remove_q.get(i, ()))
            for h in heads:
                attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
            layer.mlp.down_proj.weight[:, list(remove_channels.get(i, ()))] = 0
    return model


@functools.cache
def dense(family, attn):
    model = tiny_model(family, attn=attn, seed=1)
    with torch.no_grad():
        return model, model(IDS).logits


def logits_and_tokens(model):
    with torch.no_grad():
        logits = model(IDS).logits
        tokens = model.generate(IDS[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True)
    return logits, tokens


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_model_equals_masked_original(family, attn, case, tmp_path, tokenizer):
    remove_kv, remove_channels, remove_q = CASES[case]
    original, dense_logits = dense(family, attn)
    oracle_logits, oracle_tokens = logits_and_tokens(
        masked_oracle(copy.deepcopy(original), remove_kv, remove_channels, remove_q))
    assert (dense_logits - oracle_logits).abs().max() > 1e-3  # the removed structures really matter

    model = copy.deepcopy(original)
    manifest = new_manifest(6)
    removed = prune_width(model, manifest, remove_kv, remove_channels, remove_q)
    assert removed["kv_heads"] == {i: sorted(g) for i, g in remove_kv.items()}
    assert removed["channels"] == {i: sorted(c) for i, c in remove_channels.items()}
    logits, tokens = logits_and_tokens(model)
    assert (logits - oracle_logits).abs().max().item() <= 1e-5
    assert torch.equal(tokens, oracle_tokens)
    for layer, entry in zip(model.model.layers, manifest["width"]["layers"]):
        assert layer.self_attn.num_key_value_groups == len(entry["kept_heads"]) // len(entry["kept_kv_heads"])

    save_pruned(model, tokenizer, tmp_path / "m", manifest)
    saved = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert saved["config"] == ("stock" if case == "uniform" else "base")
    assert saved["width"]["layers"] == manifest["width"]["layers"]
    loaded = load_pruned(tmp_path / "m", attn_implementation=attn)
    assert all(p.requires_grad for p in loaded.parameters())
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tied again
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, logits)
        if case == "uniform":  # a stock config: plain transformers loads it too
            plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation=attn)
            assert torch.equal(plain(IDS).logits, logits)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_three_query_heads_per_kv_group(attn, tmp_path, tokenizer):
    # SmolLM2-like GQA: 6 query heads in 2 KV groups; one query head per group goes in layer 0, a group in layer 3
    make = functools.partial(tiny_model, "llama", hidden=96, heads=6, kv_heads=2, attn=attn, seed=8)
    remove_kv, remove_channels, remove_q = {3: [0]}, {2: [1, 2, 3]}, {0: [1, 5]}
    oracle = logits_and_tokens(masked_oracle(make(), remove_kv, remove_channels, remove_q))
    model, manifest = make(), new_manifest(6)
    prune_width(model, manifest, remove_kv, remove_channels, remove_q)
    assert manifest["width"]["layers"][0]["kept_heads"] == [0, 2, 3, 4]
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    logits, tokens = logits_and_tokens(model)
    assert (logits - oracle[0]).abs().max().item() <= 1e-5 and torch.equal(tokens, oracle[1])
    save_pruned(model, tokenizer, tmp_path / "m", manifest)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "m", attn_implementation=attn)(IDS).logits, logits)


def test_uniform_shape_the_config_class_rejects_keeps_the_original_config(tmp_path, tokenizer):
    # 4 heads with 4 KV heads (MHA), one head removed everywhere: 64 % 3 != 0, which LlamaConfig refuses
    for family, expected in (("llama", "base"), ("qwen2", "stock")):
        model = tiny_model(family, kv_heads=4, seed=3)
        manifest = new_manifest(6)
        prune_width(model, manifest, {i: [1] for i in range(6)}, {})
        save_pruned(model, tokenizer, tmp_path / family, manifest)
        saved = json.loads((tmp_path / family / MANIFEST).read_text())
        config = json.loads((tmp_path / family / "config.json").read_text())
        assert saved["config"] == expected
        assert config["num_attention_heads"] == (4 if expected == "base" else 3)
        with torch.no_grad():
            assert torch.equal(load_pruned(tmp_path / family)(IDS).logits, model(IDS).logits)


def test_rounds_compose_original_indices(tmp_path, tokenizer):
    model = tiny_model("qwen3", seed=4)
    manifest = new_manifest(6)
    prune_width(model, manifest, {2: [0]}, {2: [0, 1, 2]})
    save_pruned(model, tokenizer, tmp_path / "r1", manifest)
    model, manifest = load_pruned(tmp_path / "r1"), json.loads((tmp_path / "r1" / MANIFEST).read_text())
    removed = prune_width(model, manifest, {0: [1]}, {2: [0, 5]})  # positions in the already pruned layer 2
    assert removed["channels"] == {2: [3, 8]}  # original indices
    assert manifest["width"]["layers"][2]["kept_channels"] == [4, 5, 6, 7] + list(range(9, 128))
    assert manifest["width"]["layers"][2]["kept_kv_heads"] == [1]
    assert manifest["width"]["layers"][0]["kept_heads"] == [0, 1]
    save_pruned(model, tokenizer, tmp_path / "r2", manifest)
    oracle = masked_oracle(tiny_model("qwen3", seed=4), {2: [0], 0: [1]}, {2: [0, 1, 2, 3, 8]}, {})
    with torch.no_grad():
        assert (load_pruned(tmp_path / "r2")(IDS).logits - oracle(IDS).logits).abs().max() <= 1e-5


def test_load_pruned_refuses_a_manifest_that_does_not_match(tmp_path, tokenizer):
    model = tiny_model("mistral", seed=5)
    manifest = new_manifest(6)
    prune_width(model, manifest, {1: [0]}, {3: [4, 5]})
    save_pruned(model, tokenizer, tmp_path / "m", manifest)
    bad = json.loads((tmp_path / "m" / MANIFEST).read_text())
    bad["width"]["layers"][3]["kept_channels"].pop()
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(bad))
    with pytest.raises(PipError, match="does not match the weights"):
        load_pruned(tmp_path / "m")
    manifest["width"]["layers"][0]["kept_kv_heads"] = [1]  # claims a shape the model does not have
    with pytest.raises(PipError, match="manifest does not match the model: layer 0"):
        save_pruned(model, tokenizer, tmp_path / "m2", manifest)


def test_invalid_slices_are_refused():
    model = tiny_model("llama")
    with pytest.raises(PipError, match="equally"):
        slice_attention(model.model.layers[0].self_attn, [0, 1, 2], [0, 1])
    with pytest.raises(PipError, match="refusing to remove every"):
        prune_width(model, new_manifest(6), {0: [0, 1]}, {})
    with pytest.raises(PipError, match="invalid MLP channel"):
        prune_width(model, new_manifest(6), {}, {0: [128]})


def test_scores_match_a_hand_computation(tmp_path):
    model = tiny_model("qwen2", seed=6)  # q/k/v biases take part in the attention groups
    gen = torch.Generator().manual_seed(7)
    params = {n: p.detach() for n, p in model.named_parameters() if n.startswith("model.layers.")}
    gc = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    gp = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    save_file(gc, str(tmp_path / "clean.safetensors"))
    save_file(gp, str(tmp_path / "perturbed.safetensors"))
    a = "model.layers.1.self_attn."
    hd, hidden = 16, 64
    q, kv = slice(2 * hd, 4 * hd), slice(hd, 2 * hd)  # KV group 1 = KV head 1 + query heads 2, 3
    group = [(a + "q_proj.weight", q), (a + "q_proj.bias", q), (a + "k_proj.weight", kv), (a + "k_proj.bias", kv),
             (a + "v_proj.weight", kv), (a + "v_proj.bias", kv), (a + "o_proj.weight", (slice(None), q))]
    m = "model.layers.1.mlp."
    channel = [(m + "gate_proj.weight", 5), (m + "up_proj.weight", 5), (m + "down_proj.weight", (slice(None), 5))]

    def hand(term, parts):
        return sum(float(term(params[n][ix], gc[n][ix], gp[n][ix]).double().sum()) for n, ix in parts)

    same = lambda x: x  # noqa: E731
    terms = {"taylor_diff": (lambda w, c, p: (w * (c - p)).abs(), same),
             "norm_diff": (lambda w, c, p: (c - p) ** 2, math.sqrt),
             "taylor_gap": (lambda w, c, p: (w * c).abs() + (w * (c - p)).abs(), same),
             "taylor_both": (lambda w, c, p: (w * c).abs() + (w * p).abs(), same),
             "vec_diff": (lambda w, c, p: w * (c - p), abs),  # signed sum over the group, then |·|
             "fisher_diff": (lambda w, c, p: (w * (c - p)) ** 2, same),
             "noise_control": (lambda w, c, p: (w * (c - p)) ** 2, same),  # p: the control view's file
             "fisher_ps": (lambda w, c, p: w ** 2 * p, same),  # p: the psdiff file, S = mean_r (g_c,r − g_p,r)²
             "taylor": (lambda w, c, p: (w * c).abs(), same),
             "taylor_sq": (lambda w, c, p: (w * c) ** 2, same),
             "magnitude": (lambda w, c, p: w ** 2, math.sqrt)}
    assert set(terms) == set(NEEDS) - {"random"}  # every width score is checked here
    n_attn = 2 * hd * hidden + 2 * hd + 2 * (hd * hidden + hd) + hidden * 2 * hd
    for name, (term, post) in terms.items():
        ws = width_scores(model, name, tmp_path / "clean.safetensors", tmp_path / "perturbed.safetensors")
        assert ws.attn_size[1] == n_attn and ws.mlp_size[1] == 3 * hidden
        for kind, parts, idx, size in (("attn", group, 1, n_attn), ("mlp", channel, 5, 3 * hidden)):
            s = hand(term, parts)
            assert ws.values(kind)[1][idx] == pytest.approx(post(s), rel=1e-6), name
            assert ws.values(kind, normalise=True)[1][idx] == pytest.approx(post(s / size), rel=1e-6), name
    with pytest.raises(PipError, match="needs the perturbed"):
        width_scores(model, "taylor_diff", tmp_path / "clean.safetensors")
    del gc[a + "k_proj.bias"]
    save_file(gc, str(tmp_path / "other.safetensors"))
    with pytest.raises(PipError, match="has no tensor model.layers.1.self_attn.k_proj.bias"):
        width_scores(model, "taylor", tmp_path / "other.safetensors")
    r1, r2 = (width_scores(model, "random", seed=s) for s in (0, 0))
    assert r1 == r2 and r1 != width_scores(model, "random", seed=1)


def test_select_local_keeps_one_group_per_layer_and_breaks_ties_by_index():
    scores = [[0.1, 0.2, 0.3], [0.0, 0.0, 9.0], [0.05, 5.0, 5.0]]
    assert select_local(scores, 3, candidates=[0, 1, 2]) == {1: [0, 1], 2: [0]}
    assert select_local(scores, 3, candidates=[0, 1]) == {0: [0], 1: [0, 1]}
    assert select_local(scores, 4, candidates=[1, 2]) == {1: [0, 1], 2: [0, 1]}  # layer 1 keeps its 9.0
    with pytest.raises(PipError, match="cannot remove 5"):
        select_local(scores, 5, candidates=[1, 2])


def test_select_global_spends_a_parameter_budget_over_both_types():
    attn, mlp = [[0.5, 0.1], [0.9, 0.8]], [[0.2, 0.3, 0.05], [0.4, 0.01, 0.6]]
    kv, ch = select_global(attn, mlp, [100, 100], [10, 10], budget=125, candidates=[0, 1])
    # order: ch(1,1)=.01, ch(0,2)=.05, kv(0,1)=.1, ch(0,0)=.2 → 10+10+100+10 = 130 ≥ 125
    assert kv == {0: [1]} and ch == {0: [0, 2], 1: [1]}
    with pytest.raises(PipError, match="cannot remove"):
        select_global(attn, mlp, [100, 100], [10, 10], budget=10**6, candidates=[0, 1])


def test_plan_width_counts_and_refuses_ratios_that_empty_a_layer():
    shape = shape_of(tiny_model("llama")).width()
    assert shape == {"layers": 6, "kv_heads": 2, "channels": 128, "kv_group_params": 2 * 2 * 16 * 64 + 2 * 16 * 64,
                     "channel_params": 3 * 64}
    # the SmolLM2-135M shape: 30 layers, 3 KV groups of 3 query heads (head_dim 64), 1536 channels, 134.5 M params
    smol = {"layers": 30, "kv_heads": 3, "channels": 1536, "kv_group_params": 2 * 3 * 64 * 576 + 2 * 64 * 576,
            "channel_params": 3 * 576, "params_total": 134_515_008}
    plan = plan_width(**smol, target_ratio=0.2, rounds=4, protect_first=4, protect_last=2)
    assert plan["candidates"] == list(range(4, 28))
    assert sum(plan["kv_groups_per_round"]) == plan["kv_groups_total"] == round(plan["fraction"] * 24 * 3)
    assert sum(plan["channels_per_round"]) == plan["channels_total"]
    assert max(plan["channels_per_round"]) - min(plan["channels_per_round"]) <= 1
    assert plan["expected_ratio"] == pytest.approx(0.2, abs=0.01)
    with pytest.raises(PipError, match="zero attention heads"):
        plan_width(**smol, target_ratio=0.45, protect_first=4, protect_last=2)  # needs > 2 of 3 KV groups/layer
    with pytest.raises(PipError, match="unreachable"):
        plan_width(**smol, target_ratio=0.7, protect_first=4, protect_last=2)
    with pytest.raises(PipError, match="nothing to width-prune"):
        plan_width(**smol, target_ratio=0.1, protect_first=20, protect_last=10)
    mqa = {**smol, "kv_heads": 1, "kv_group_params": 4 * 64 * 576}
    with pytest.raises(PipError, match="zero attention heads"):
        plan_width(**mqa, target_ratio=0.2)
