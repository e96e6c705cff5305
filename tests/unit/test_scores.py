"""Gradients and PIP layer scores against direct autograd computations on a tiny model."""

import math

import pytest
import torch
from safetensors.torch import save_file

from pipsteps.grads import GradConfig, check_finite, collect, paired_sq_diff
from pipsteps.io import PipError
from pipsteps.scores import DEPTH_SCORES, depth_scores, layer_stats
from pipsteps.tiny import tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_model("llama", layers=3)
    clean = torch.randint(0, 512, (6, 16))
    perturbed = clean.clone()
    perturbed[:, 5::4] = torch.randint(0, 512, perturbed[:, 5::4].shape)
    d = tmp_path_factory.mktemp("grads")
    files = {}
    for view, ids in (("clean", clean), ("perturbed", perturbed)):
        grads, _ = collect(model, ids, GradConfig(micro_batch=4, view=view))
        files[view] = d / f"{view}.safetensors"
        save_file(grads, str(files[view]))
    return model, clean, perturbed, files


def direct_grads(model, ids):
    """Mean over samples of each sample's mean-token loss, differentiated in one go."""
    params = {n: p for n, p in model.named_parameters() if n.startswith("model.layers.")}
    for p in model.parameters():
        p.requires_grad_(True)
    losses = [model(input_ids=x[None], labels=x[None]).loss for x in ids]
    g = torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))
    return dict(zip(params, g))


def test_micro_batched_gradient_equals_direct_mean_loss_gradient(setup):
    model, clean, _, _ = setup
    direct = direct_grads(model, clean)
    for mb in (1, 4, 6):
        got, loss = collect(model, clean, GradConfig(micro_batch=mb))
        assert got.keys() == direct.keys()
        for k in got:
            torch.testing.assert_close(got[k], direct[k], rtol=1e-4, atol=1e-7)
        assert math.isfinite(loss)


def test_pertimport_and_variants_match_hand_computation(setup):
    model, clean, perturbed, files = setup
    gc, gp = direct_grads(model, clean), direct_grads(model, perturbed)
    weights = dict(model.named_parameters())
    stats = layer_stats(model, files["clean"], files["perturbed"])
    assert sorted(stats) == [0, 1, 2]
    for i in range(3):
        keys = [k for k in gc if k.startswith(f"model.layers.{i}.")]
        d = torch.cat([(gc[k] - gp[k]).flatten() for k in keys]).double()
        c = torch.cat([gc[k].flatten() for k in keys]).double()
        p = torch.cat([gp[k].flatten() for k in keys]).double()
        w = torch.cat([weights[k].detach().flatten() for k in keys]).double()
        expected = {
            "norm_diff": d.norm().item(),
            "rel_diff": (d.norm() / c.norm()).item(),
            "cos_diff": 1 - torch.nn.functional.cosine_similarity(c, p, dim=0).item(),
            "taylor_diff": (w * d).abs().sum().item(),
            "fisher_diff": (w * d).square().sum().item(),
            "noise_control": d.norm().item(),  # the same statistic, read from (clean, control) files
            "taylor": (w * c).abs().sum().item(),
            "taylor_sq": (w * c).square().sum().item(),
            "magnitude": w.norm().item(),
        }
        for name, value in expected.items():
            assert depth_scores(name, stats)[i] == pytest.approx(value, rel=1e-4), (name, i)
    assert set(expected) | {"fisher_ps"} == set(DEPTH_SCORES)  # fisher_ps: the next test


def test_per_sample_squared_difference_matches_per_sample_autograd(setup, tmp_path):
    """psdiff with k = 2 draws: S = mean over perturbed rows r of (g_clean,⌊r/2⌋ − g_pert,r)², each gradient that of
    one sample alone; fisher_ps = Σ W²·S per layer. With one draw, S ≥ (G_clean − G_pert)² (mean of squares)."""
    model, clean, perturbed, files = setup
    clean3 = clean[:3]
    pert6 = torch.cat([perturbed[:3], perturbed[3:]]).reshape(2, 3, -1).transpose(0, 1).reshape(6, -1)
    got, lc, lp = paired_sq_diff(model, clean3, pert6, GradConfig(micro_batch=4))
    gc = [direct_grads(model, clean3[i:i + 1]) for i in range(3)]
    gp = [direct_grads(model, pert6[r:r + 1]) for r in range(6)]
    for name in got:
        want = sum((gc[r // 2][name] - gp[r][name]) ** 2 for r in range(6)) / 6
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-12)
    with torch.no_grad():
        assert lc == pytest.approx(model(input_ids=clean3, labels=clean3).loss.item(), rel=1e-5)
        assert lp == pytest.approx(model(input_ids=pert6, labels=pert6).loss.item(), rel=1e-5)
    save_file(got, str(tmp_path / "psdiff.safetensors"))
    stats = layer_stats(model, None, tmp_path / "psdiff.safetensors")
    weights = dict(model.named_parameters())
    for i in range(3):
        want = sum(float((weights[k].detach().double() ** 2 * got[k].double()).sum()) for k in got
                   if k.startswith(f"model.layers.{i}."))
        assert depth_scores("fisher_ps", stats)[i] == pytest.approx(want, rel=1e-6)
    one, _, _ = paired_sq_diff(model, clean, perturbed, GradConfig())
    mean_c, mean_p = direct_grads(model, clean), direct_grads(model, perturbed)
    for name, s in one.items():
        assert (s >= (mean_c[name] - mean_p[name]) ** 2 - 1e-12).all()
    with pytest.raises(PipError, match="not a multiple"):
        paired_sq_diff(model, clean[:4], perturbed[:6], GradConfig())


def test_identical_views_give_zero_pertimport(setup):
    model, _, _, files = setup
    stats = layer_stats(model, files["clean"], files["clean"])
    assert depth_scores("norm_diff", stats) == [0.0, 0.0, 0.0]


def test_non_finite_gradient_names_round_view_and_layer():
    grads = {"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2),
             "model.layers.1.mlp.up_proj.weight": torch.tensor([[1.0, float("nan")]])}
    with pytest.raises(PipError, match="round 3, view perturbed, layer 1"):
        check_finite(grads, GradConfig(round=3, view="perturbed"))


def test_zero_gradient_layers_are_reported():
    grads = {"model.layers.0.mlp.up_proj.weight": torch.zeros(2, 2),
             "model.layers.1.mlp.up_proj.weight": torch.ones(2, 2)}
    assert check_finite(grads, GradConfig()) == [0]
