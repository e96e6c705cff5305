"""Forward-only depth methods (issue #8) on tiny models: skipped-layer losses against a model with the layer really
removed, every ablation score against its formula, sleb / pip_greedy / block_influence_iter rounds, the
noise_control scores and the control calibration view, determinism under the seed."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from pipsteps.ablation import skip_losses
from pipsteps.ablation import block_influence
from pipsteps.grads import GradConfig, collect
from pipsteps.io import PipError
from pipsteps.plan import PlanConfig
from pipsteps.plan import run as plan
from pipsteps.prune import PruneConfig
from pipsteps.prune import run as prune
from pipsteps.scores import ABLATION_SCORES, ablation_scores, depth_scores, layer_stats
from pipsteps.surgery import MANIFEST, load_pruned, remove_layers
from pipsteps.tiny import tiny_model

GEN = torch.Generator().manual_seed(11)
CLEAN = torch.randint(4, 512, (5, 16), generator=GEN)
PERTURBED = CLEAN.clone()
PERTURBED[:, 3::5] = torch.randint(4, 512, PERTURBED[:, 3::5].shape, generator=GEN)


def direct_loss(model, ids, skip=None) -> float:
    """Mean next-token loss of a deep copy of the model with layer `skip` really removed."""
    m = copy.deepcopy(model)
    if skip is not None:
        remove_layers(m, [skip])
    with torch.no_grad():
        return m(input_ids=ids, labels=ids, use_cache=False).loss.item()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_skipped_layer_losses_equal_a_model_without_that_layer(family):
    model = tiny_model(family, seed=2)
    full, skipped = skip_losses(model, CLEAN, [0, 2, 5], micro_batch=2)  # uneven micro-batches: 2 + 2 + 1
    assert full == pytest.approx(direct_loss(model, CLEAN), rel=1e-5)
    assert sorted(skipped) == [0, 2, 5]
    for i, loss in skipped.items():
        assert loss == pytest.approx(direct_loss(model, CLEAN, i), rel=1e-5)
    with pytest.raises(PipError, match="outside the model's 6 layers"):
        skip_losses(model, CLEAN, [6])


def test_ablation_scores_follow_their_formulas():
    model = tiny_model("llama", seed=3)
    Lc, Lp = direct_loss(model, CLEAN), direct_loss(model, PERTURBED)
    lc = {i: direct_loss(model, CLEAN, i) for i in range(6)}
    lp = {i: direct_loss(model, PERTURBED, i) for i in range(6)}
    want = {"sleb": [lc[i] for i in range(6)],
            "gap_ablation": [abs((lp[i] - lc[i]) - (Lp - Lc)) for i in range(6)],
            "pip_greedy": [(lc[i] - Lc) + (lp[i] - Lp) for i in range(6)],
            "gap_greedy": [(lc[i] - Lc) + abs((lp[i] - lc[i]) - (Lp - Lc)) for i in range(6)]}
    full_c, skip_c = skip_losses(model, CLEAN, range(6))
    full_p, skip_p = skip_losses(model, PERTURBED, range(6))
    assert sorted(want) == sorted(ABLATION_SCORES)
    for name, w in want.items():
        got = ablation_scores(name, {"clean": full_c, "perturbed": full_p}, {"clean": skip_c, "perturbed": skip_p}, 6)
        assert got == pytest.approx(w, rel=1e-4, abs=2e-5), name
    # only candidates are scored
    assert ablation_scores("sleb", {"clean": full_c}, {"clean": {1: 2.0, 3: 1.0}}, 6) == [None, 2.0, None, 1.0,
                                                                                         None, None]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    for view, ids in (("clean", CLEAN), ("perturbed", PERTURBED)):
        save_file({"input_ids": ids}, str(d / f"{view}.safetensors"))
    return {"clean": d / "clean.safetensors", "perturbed": d / "perturbed.safetensors"}


@pytest.mark.parametrize("method", ["sleb", "pip-pip_greedy", "pip-gap_greedy", "pip-gap_ablation"])
def test_forward_rounds_remove_the_lowest_scoring_layer_deterministically(tiny_dir, calib, tmp_path, method):
    p = plan(PlanConfig(method=method, target_ratio=0.2), tiny_dir)
    assert p["rounds"] == 2  # iterative, one layer per round
    rec = prune(PruneConfig(method=method), tiny_dir, p, tmp_path / "a", calib=calib)
    model = load_pruned(tiny_dir)
    lc = [direct_loss(model, CLEAN, i) for i in range(6)]
    name = method.partition("-")[2] or method
    if name == "sleb":
        want = lc
    else:
        Lc, Lp = direct_loss(model, CLEAN), direct_loss(model, PERTURBED)
        lp = [direct_loss(model, PERTURBED, i) for i in range(6)]
        want = [ABLATION_SCORES[name](Lc, Lp, lc[i], lp[i]) for i in range(6)]
    scores = [s["score"] for s in rec["layer_scores"]]
    assert scores == pytest.approx(want, rel=1e-4, abs=2e-5)
    assert [r["index"] for r in rec["removed"]] == [min(range(6), key=lambda i: (want[i], i))]
    assert rec["score"] == name and rec["views"] == [] and rec["calib_views"] == (
        ["clean"] if name == "sleb" else ["clean", "perturbed"])
    again = prune(PruneConfig(method=method), tiny_dir, p, tmp_path / "b", calib=calib)
    assert again["removed"] == rec["removed"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    with pytest.raises(PipError, match="needs the .*calibration view"):
        prune(PruneConfig(method=method), tiny_dir, p, tmp_path / "c", calib={"clean": calib["clean"]}
              if name != "sleb" else {})


def test_block_influence_iter_scores_the_current_model(tiny_dir, calib, tmp_path):
    p = plan(PlanConfig(method="block_influence_iter", target_ratio=0.2), tiny_dir)
    assert p["rounds"] == 2
    r1 = prune(PruneConfig(method="block_influence_iter"), tiny_dir, p, tmp_path / "r1", calib=calib)
    r2 = prune(PruneConfig(round=2, method="block_influence_iter"), tmp_path / "r1", p, tmp_path / "r2", calib=calib)
    for rec, d in ((r1, tiny_dir), (r2, tmp_path / "r1")):
        want = block_influence(load_pruned(d), CLEAN)[0]
        assert [s["score"] for s in rec["layer_scores"]] == pytest.approx(want, abs=1e-6)
        assert rec["removed"][0]["index"] == min(range(len(want)), key=want.__getitem__)
    manifest = json.loads((tmp_path / "r2" / MANIFEST).read_text())
    assert len(manifest["removed_layers"]) == 2 and manifest["method"] == "block_influence_iter"


def test_noise_control_reads_the_control_gradients(tiny_dir, tmp_path):
    model = load_pruned(tiny_dir)
    files = {}
    for view, seed in (("clean", 1), ("control", 2)):
        ids = torch.randint(4, 512, (4, 16), generator=torch.Generator().manual_seed(seed))
        files[view] = tmp_path / f"{view}.safetensors"
        save_file(collect(model, ids, GradConfig())[0], str(files[view]))
    want = depth_scores("norm_diff", layer_stats(model, files["clean"], files["control"]))
    p = plan(PlanConfig(method="pip_oneshot", target_ratio=0.2), tiny_dir)
    rec = prune(PruneConfig(method="pip_oneshot-noise_control"), tiny_dir, p, tmp_path / "m", files)
    assert [s["score"] for s in rec["layer_scores"]] == pytest.approx(want) and rec["views"] == ["clean", "control"]
    with pytest.raises(PipError, match="needs the control gradient"):
        prune(PruneConfig(method="pip-noise_control"), tiny_dir, p, tmp_path / "x", {"clean": files["clean"]})
    pw = plan(PlanConfig(unit="width", method="pip_oneshot-noise_control", target_ratio=0.2), tiny_dir)
    rec = prune(PruneConfig(method="pip_oneshot-noise_control"), tiny_dir, pw, tmp_path / "w", files)
    assert rec["score"] == "noise_control" and rec["removed_groups"]["channels"]


def test_explicit_scores_are_checked_against_the_unit(tiny_dir):
    with pytest.raises(PipError, match="'gap_greedy' is not a width score"):
        plan(PlanConfig(unit="width", method="pip-gap_greedy"), tiny_dir)
    with pytest.raises(PipError, match="sleb.*whole layers only"):
        plan(PlanConfig(unit="width", method="sleb"), tiny_dir)
    with pytest.raises(PipError, match="unknown method 'taylor-norm_diff'"):
        plan(PlanConfig(method="taylor-norm_diff"), tiny_dir)
