"""RunPlan: what each round reads and the flags it gets, from the validated config (no workflow run)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import yaml
from snakemake.utils import validate

from pipsteps.runplan import RunPlan

REPO = Path(__file__).resolve().parents[2]


def plan(**prune) -> RunPlan:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["prune"].update(prune)
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))  # fills in the schema defaults
    return RunPlan(cfg)


def wc(unit="width", method="pip", ratio="0.2", round="1"):
    return SimpleNamespace(unit=unit, method=method, ratio=ratio, round=round)


def test_default_variants_and_seeds():
    p = plan()
    assert p.variants() == ["width/pip/r0.2", "width/taylor_sq/r0.2", "width/random/r0.2"]
    assert p.variant_seed(wc(method="random")) == 0 and p.variant_seed(wc(method="random_s4")) == 4
    grid = plan(grid={"units": ["depth", "width"], "methods": ["pip", "sleb", "random"], "seeds": [1, 2]})
    assert grid.variants() == ["depth/pip/r0.2", "depth/sleb/r0.2", "depth/random_s1/r0.2", "depth/random_s2/r0.2",
                               "width/pip/r0.2", "width/random_s1/r0.2", "width/random_s2/r0.2"]  # sleb: depth only


def test_round_one_reads_the_dense_gradients_later_rounds_take_their_own():
    p = plan()
    assert p.round_inputs(wc()) == {"clean": "results/base/grads_clean.safetensors",
                                    "perturbed": "results/base/grads_perturbed.safetensors"}
    assert not p.own_grads(wc()) and p.round_flags(wc(), 2) == "" and p.round_gpu(wc()) == 0
    later = wc(round="3")
    assert p.round_inputs(later) == {"calib_clean": "results/calibration/clean.safetensors",
                                     "calib_perturbed": "results/calibration/perturbed.safetensors"}
    flags = p.round_flags(later, 2)
    assert "--own-grads true" in flags and "--device auto" in flags and "--threads 2" in flags
    assert "--keep-grads" not in flags and p.round_gpu(later) == 1 and p.previous_model(later).endswith("round_2/model")
    kept = plan()
    kept.config["gradients"]["keep"] = True
    assert "--keep-grads results/width/pip/r0.2/round_3" in kept.round_flags(later, 2)


def test_what_other_methods_read():
    p = plan()
    assert p.round_inputs(wc(method="taylor_sq", round="2")) == {"calib_clean": "results/calibration/clean.safetensors"}
    rnd = wc(method="random", round="2")
    assert p.round_inputs(rnd) == {} and p.round_flags(rnd, 1) == ""
    assert p.round_inputs(wc(method="pip-fisher_ps", round="2")) == {
        "calib_clean": "results/calibration/clean.safetensors",
        "calib_perturbed": "results/calibration/perturbed.safetensors"}  # psdiff: both views, paired
    assert p.round_inputs(wc(method="pip-noise_control", round="2"))["calib_control"].endswith("control.safetensors")
    sleb = wc(unit="depth", method="sleb", round="1")
    assert p.round_inputs(sleb) == {"calib_clean": "results/calibration/clean.safetensors"}
    assert "--own-grads" not in p.round_flags(sleb, 2) and "--micro-batch" in p.round_flags(sleb, 2)
    assert p.round_inputs(wc(unit="depth", method="block_influence")) == {
        "influence": "results/base/block_influence.json"}
    assert p.prune_score(wc(method="taylor")) == "none" and p.prune_score(wc()) == "fisher_diff"


def test_each_unit_reads_only_its_own_block():
    """A width setting changes only the width plans' flags and scores, a depth setting only the depth ones."""
    base = plan()
    width = plan(width={"score": "taylor_diff", "rounds": 2, "ranking": "global", "protect_first": 1})
    depth = plan(depth={"score": "gap_greedy", "layers_per_round": 3, "protect_last": 2})
    w, d = wc(), wc(unit="depth")
    assert base.plan_flags(w) == "--rounds 4 --ranking local --protect-first None --protect-last None"
    assert base.plan_flags(d) == "--layers-per-round 1 --protect-first None --protect-last None"
    assert width.plan_flags(w) == "--rounds 2 --ranking global --protect-first 1 --protect-last None"
    assert width.plan_flags(d) == base.plan_flags(d) and depth.plan_flags(w) == base.plan_flags(w)
    assert depth.plan_flags(d) == "--layers-per-round 3 --protect-first None --protect-last 2"
    assert (width.prune_score(w), width.prune_score(d)) == ("taylor_diff", "norm_diff")
    assert (depth.prune_score(w), depth.prune_score(d)) == ("fisher_diff", "gap_greedy")
    assert depth.round_inputs(wc(unit="depth", round="2")) == {  # gap_greedy: forward passes on both views
        "calib_clean": "results/calibration/clean.safetensors",
        "calib_perturbed": "results/calibration/perturbed.safetensors"}
