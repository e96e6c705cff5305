"""Methods and units of the experiment grid on a tiny model: block influence against a direct 1 − cos, one-shot
PIP (depth and width), width rounds (local and global ranking), planning errors and the grid summary cell."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipsteps.ablation import block_influence
from pipsteps.grads import GradConfig, collect
from pipsteps.files import write_json
from pipsteps.io import PipError, count_params
from pipsteps.plan import PlanConfig, base_method
from pipsteps.plan import run as plan
from pipsteps.prune import PruneConfig
from pipsteps.prune import run as prune
from pipsteps.summarize import kept_compact
from pipsteps.surgery import MANIFEST, load_pruned
from pipsteps.tiny import tiny_model
from pipsteps.width import layer_shapes
from pipsteps.width_scores import width_scores

VIEWS = ("clean", "perturbed")
IDS = torch.randint(4, 512, (4, 16), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def grads(tiny_dir, tmp_path_factory):
    """Dense-model gradients of two different batches, saved like the workflow's clean and perturbed files."""
    d = tmp_path_factory.mktemp("grads")
    model = load_pruned(tiny_dir)
    for view, seed in (("clean", 1), ("perturbed", 2)):
        ids = torch.randint(4, 512, (4, 16), generator=torch.Generator().manual_seed(seed))
        g, _ = collect(model, ids, GradConfig())
        save_file(g, str(d / f"{view}.safetensors"))
    return d / "clean.safetensors", d / "perturbed.safetensors"


def test_block_influence_equals_one_minus_cosine_of_the_hidden_states():
    model = tiny_model("llama", seed=1)
    bi, n_tokens = block_influence(model, IDS, micro_batch=3)  # uneven micro-batches: 3 + 1 samples
    assert n_tokens == IDS.numel()
    model.model.norm = torch.nn.Identity()  # the last hidden state is then the last layer's raw output
    with torch.no_grad():
        hs = model(IDS, output_hidden_states=True).hidden_states
    direct = [1 - F.cosine_similarity(hs[i].double(), hs[i + 1].double(), dim=-1).mean().item() for i in range(6)]
    assert bi == pytest.approx(direct, abs=1e-6)
    assert all(0 < b < 1 for b in bi)


def test_depth_block_influence_removes_the_lowest_layers_in_one_round(tiny_dir, tmp_path):
    p = plan(PlanConfig(method="block_influence", target_ratio=0.2), tiny_dir)
    assert p["rounds"] == 1 and p["per_round"] == [2]
    scores = [0.5, 0.1, 0.4, 0.05, 0.3, 0.2]
    write_json(tmp_path / "bi.json", {"scores": scores})
    rec = prune(PruneConfig(method="block_influence"), tiny_dir, p, tmp_path / "m", influence=tmp_path / "bi.json")
    assert [r["orig_index"] for r in rec["removed"]] == [1, 3] and rec["views"] == []
    assert load_pruned(tmp_path / "m").config.num_hidden_layers == 4
    with pytest.raises(PipError, match="needs the block influence JSON"):
        prune(PruneConfig(method="block_influence"), tiny_dir, p, tmp_path / "x")


def test_depth_pip_oneshot_removes_every_layer_in_round_one(tiny_dir, grads, tmp_path):
    p = plan(PlanConfig(method="pip_oneshot", target_ratio=0.2), tiny_dir)
    iterative = plan(PlanConfig(method="pip", target_ratio=0.2), tiny_dir)
    assert (p["rounds"], p["per_round"]) == (1, [2]) and iterative["rounds"] == 2
    rec = prune(PruneConfig(method="pip_oneshot", score="norm_diff"), tiny_dir, p, tmp_path / "m",
                 dict(zip(VIEWS, grads)))
    scores = [s["score"] for s in rec["layer_scores"]]
    lowest = sorted(sorted(range(6), key=lambda i: scores[i])[:2])
    assert [r["orig_index"] for r in rec["removed"]] == lowest and rec["layers_left"] == 4
    assert rec["achieved_ratio"] >= 0.2 and rec["views"] == ["clean", "perturbed"]


def test_width_pip_oneshot_removes_the_planned_groups_in_one_round(tiny_dir, grads, tmp_path):
    p = plan(PlanConfig(unit="width", method="pip_oneshot", target_ratio=0.2, rounds=4), tiny_dir)
    assert p["rounds"] == 1 and (p["protect_first"], p["protect_last"]) == (1, 0)  # round(6/8), round(6/16)
    assert p["kv_groups_per_round"] == [p["kv_groups_total"]] == [3]
    rec = prune(PruneConfig(method="pip_oneshot", score="taylor_diff"), tiny_dir, p, tmp_path / "m",
                 dict(zip(VIEWS, grads)))
    model = load_pruned(tmp_path / "m")
    shapes = layer_shapes(model)
    assert shapes[0] == (4, 2, 128)  # protected
    assert 12 - sum(kv for _, kv, _ in shapes) == 3 and 6 * 128 - sum(c for *_, c in shapes) == p["channels_total"]
    assert rec["params_after"] == count_params(model)["total"] == p["params_total"] - p["expected_removed_params"]
    assert rec["achieved_ratio"] == pytest.approx(p["expected_ratio"])
    # the removed channels of layer 1 are its lowest taylor_diff scores (original indices)
    dense_scores = width_scores(load_pruned(tiny_dir), "taylor_diff", *grads).values("mlp")[1]
    removed = rec["removed_groups"]["channels"][1]  # keyed by original layer, original channel indices
    kept = json.loads((tmp_path / "m" / MANIFEST).read_text())["width"]["layers"][1]["kept_channels"]
    assert removed and sorted(removed + kept) == list(range(128))
    assert max(dense_scores[c] for c in removed) <= min(dense_scores[c] for c in kept)
    assert rec["kept"][0] == {"orig_index": 0, "heads": 4, "kv_heads": 2, "channels": 128}


@pytest.mark.parametrize("ranking", ["local", "global"])
def test_width_rounds_compose_to_the_target(tiny_dir, grads, tmp_path, ranking):
    p = plan(PlanConfig(unit="width", method="taylor", target_ratio=0.2, rounds=2, ranking=ranking,
                        protect_first=0, protect_last=1), tiny_dir)
    assert p["candidates"] == [0, 1, 2, 3, 4]
    r1 = prune(PruneConfig(round=1, method="taylor"), tiny_dir, p, tmp_path / "r1", {"clean": grads[0]})
    # round 2 scores the pruned model: gradients of the round-1 model, keyed and shaped like its parameters
    model = load_pruned(tmp_path / "r1")
    g, _ = collect(model, IDS, GradConfig())
    save_file(g, str(tmp_path / "g2.safetensors"))
    r2 = prune(PruneConfig(round=2, method="taylor"), tmp_path / "r1", p, tmp_path / "r2",
               {"clean": tmp_path / "g2.safetensors"})
    final = load_pruned(tmp_path / "r2")
    assert layer_shapes(final)[5] == (4, 2, 128) and r2["params_before"] == r1["params_after"]
    assert min(kv for _, kv, _ in layer_shapes(final)) >= 1
    if ranking == "local":
        assert r2["achieved_ratio"] == pytest.approx(p["expected_ratio"])
    else:  # the parameter budget is reached, overshooting by less than one KV group per round
        assert 0.2 - 0.01 <= r2["achieved_ratio"] < p["expected_ratio"] + 2 * 6144 / p["params_total"]
    manifest = json.loads((tmp_path / "r2" / MANIFEST).read_text())
    assert manifest["unit"] == "width" and [r["round"] for r in manifest["rounds"]] == [1, 2]
    assert kept_compact(r2["kept"]).endswith("4/128")


def test_width_plan_refuses_a_ratio_that_empties_a_layer(tiny_dir):
    # 0.4 of the tiny model's parameters needs 6 of the 10 unprotected KV groups (2 per layer): one layer would
    # lose both; refused while planning, before any gradient is computed
    with pytest.raises(PipError, match="would leave a layer with zero attention heads"):
        plan(PlanConfig(unit="width", target_ratio=0.4), tiny_dir)


def test_method_names_and_units_are_checked(tiny_dir):
    assert base_method("random_s7") == ("random", 7) and base_method("pip_oneshot") == ("pip_oneshot", None)
    with pytest.raises(PipError, match="unknown method 'slab'"):
        plan(PlanConfig(method="slab"), tiny_dir)
    with pytest.raises(PipError, match="unknown unit 'heads'"):
        plan(PlanConfig(unit="heads"), tiny_dir)
    with pytest.raises(PipError, match="block_influence.*whole layers only"):
        plan(PlanConfig(unit="width", method="block_influence"), tiny_dir)


def test_random_seed_variants_differ_and_repeat(tiny_dir, tmp_path):
    p = plan(PlanConfig(unit="width", method="random", target_ratio=0.2, rounds=1), tiny_dir)
    recs = {m: prune(PruneConfig(method=m), tiny_dir, p, tmp_path / m) for m in ("random_s1", "random_s2")}
    again = prune(PruneConfig(method="random_s1", seed=99), tiny_dir, p, tmp_path / "again")
    assert recs["random_s1"]["seed"] == 1 and again["removed_groups"] == recs["random_s1"]["removed_groups"]
    assert recs["random_s1"]["removed_groups"] != recs["random_s2"]["removed_groups"]


def test_kept_compact_collapses_runs():
    kept = [{"heads": h, "channels": c} for h, c in [(4, 128), (2, 96), (2, 96), (2, 96), (4, 100)]]
    assert kept_compact(kept) == "4/128 2/96×3 4/100" and kept_compact(None) == "-"
