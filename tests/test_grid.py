"""The experiment grid through the real snakemake CLI on the tiny random Llama: depth and width × PIP, ShortGPT
block influence and random in one run, sharing the prepared model, the calibration and the dense gradients."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import GRID_TARGETS as TARGETS
from conftest import GRID_VARIANTS as VARIANTS
from conftest import dry_run, grid_config, snakemake


@pytest.fixture(scope="module")
def grid(grid_run) -> tuple[Path, list]:
    """(work directory after a complete grid run, the job list of the dry run before it): the session's grid run
    (tests/conftest.py)."""
    return grid_run


def test_dry_run_computes_the_dense_gradients_once_for_every_variant(grid):
    _, jobs = grid
    grads = [w for rule, w in jobs if rule.startswith("collect_")]
    assert sorted((rule, w.get("view")) for rule, w in jobs if rule.startswith("collect_")) == [
        ("collect_gradients", "clean"), ("collect_gradients", "perturbed")], grads
    assert [r for r, _ in jobs].count("block_influence") == 1
    assert [r for r, _ in jobs].count("prepare_model") == 1 and [r for r, _ in jobs].count("prepare_calibration") == 1
    # round 1 of every variant is known before any plan exists (static summary inputs), so the dense gradients'
    # consumers are all in the DAG: both gradient-based variants read the same two files
    first = sorted(f"{w['unit']}/{w['method']}/r{w['ratio']}" for r, w in jobs if r == "prune_round")
    assert first == sorted(VARIANTS) and all(w["round"] == "1" for r, w in jobs if r == "prune_round")
    assert sorted(f"{w['unit']}/{w['method']}/r{w['ratio']}" for r, w in jobs if r == "plan_rounds") == sorted(VARIANTS)


def test_every_variant_has_its_outputs(grid):
    workdir, _ = grid
    r = workdir / "results"
    # the dense gradients are kept (shared by every gradient-based variant); later rounds take theirs in their own
    # job, in a temporary directory
    assert sorted(str(p.relative_to(r)) for p in r.rglob("grads_*.safetensors")) == [
        "base/grads_clean.safetensors", "base/grads_perturbed.safetensors"]
    for v in VARIANTS:
        plan = json.loads((r / v / "plan.json").read_text())
        assert plan["rounds"] == (2 if v.startswith("width") else 1)  # block_influence: one-shot
        last = json.loads((r / v / f"round_{plan['rounds']}" / "round.json").read_text())
        assert last["achieved_ratio"] >= 0.2 and math.isfinite(
            json.loads((r / v / "eval/metrics.json").read_text())["ppl"]["heldout"]["16"])
        assert (workdir / "benchmarks/prune_round" / v / "round_1.tsv").exists()
    # round 2 of width PIP took the gradients of the width-pruned (heterogeneous) round-1 model, in its own job
    g2 = json.loads((r / "width/pip/r0.2/round_2/round.json").read_text())["gradients"]["clean"]
    assert len(g2["grad_norm_per_layer"]) == 6 and math.isfinite(g2["loss"])
    assert not list(workdir.glob("logs/collect_round_gradients"))
    bi = json.loads((r / "base/block_influence.json").read_text())["scores"]
    removed = json.loads((r / "depth/block_influence/r0.2/round_1/round.json").read_text())["removed"]
    assert sorted(x["orig_index"] for x in removed) == sorted(sorted(range(6), key=lambda i: bi[i])[:2])
    assert (r / "plots/removed_layers.png").stat().st_size > 0


def test_summary_has_a_row_per_variant_with_kept_heads_and_channels(grid):
    workdir, _ = grid
    rows = list(csv.DictReader((workdir / "results/summary.tsv").open(), delimiter="\t"))
    assert [row["stage"] for row in rows] == ["dense", *VARIANTS]
    for row in rows[1:]:
        v = row["stage"]
        last = sorted((workdir / "results" / v).glob("round_*/round.json"))[-1]
        rec = json.loads(last.read_text())
        assert float(row["ratio"]) == round(rec["achieved_ratio"], 4) and int(row["params"]) == rec["params_after"]
        assert float(row["prune_s"]) > 0 and float(row["prune_peak_mb"]) > 0
        if v.startswith("width"):
            assert row["removed_layers"] == "-" and row["layers"] == "6"
            cells = [c for part in row["kept_heads/channels"].split() for c in
                     [part.split("×")[0]] * (int(part.split("×")[1]) if "×" in part else 1)]
            assert cells == [f"{k['heads']}/{k['channels']}" for k in rec["kept"]] and len(cells) == 6
            assert cells[0] == "4/128"  # layer 0 protected: round(6 / 8) = 1 first layer
        else:
            assert row["kept_heads/channels"] == "-" and len(row["removed_layers"].split()) == 2
    assert float(rows[1]["grads_s"]) > 0 and float(rows[2]["grads_s"]) > 0  # PIP: gradients; BI: forward pass


def test_width_models_load_with_load_pruned_and_have_fewer_parameters(grid):
    import torch

    from pipsteps.io import count_params
    from pipsteps.surgery import load_pruned
    from pipsteps.width import layer_shapes

    workdir, _ = grid
    r = workdir / "results"
    dense = count_params(load_pruned(r / "base/model"))["total"]
    ids = torch.randint(4, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    for v in ("width/pip/r0.2", "width/random/r0.2"):
        model = load_pruned(r / v / "model")
        manifest = json.loads((r / v / "model/pruning_manifest.json").read_text())
        assert count_params(model)["total"] < dense
        assert layer_shapes(model) == [(len(e["kept_heads"]), len(e["kept_kv_heads"]), len(e["kept_channels"]))
                                       for e in manifest["width"]["layers"]]
        with torch.no_grad():
            assert torch.isfinite(model(ids).logits).all()


def test_changing_one_method_setting_reruns_only_that_variant(grid):
    workdir, _ = grid
    cfg = grid_config()
    cfg["prune"]["width"]["score"] = "norm_diff"  # the width PIP score: only width/pip
    (workdir / "alt.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run(workdir, workdir / "alt.yaml", *TARGETS)
    stages = {f"{w['unit']}/{w['method']}/r{w['ratio']}" if "unit" in w else w.get("where", w.get("stage", ""))
              for _, w in jobs} - {""}
    assert {s.split("/round_")[0] for s in stages} == {"width/pip/r0.2"}, jobs
    assert sorted(r for r, _ in jobs) == sorted(["prune_round", "prune_round", "final_model", "evaluate_ppl",
                                                 "summarize", "plot_results"]), jobs
    cfg = grid_config()
    cfg["prune"]["seed"] = 3  # the random method's seed: only the random variants
    (workdir / "alt.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run(workdir, workdir / "alt.yaml", *TARGETS)
    assert {f"{w['unit']}/{w['method']}" for r, w in jobs if r == "prune_round"} == {"depth/random", "width/random"}
    assert "collect_gradients" not in {r for r, _ in jobs} and "block_influence" not in {r for r, _ in jobs}


def test_bad_grid_input_fails_before_heavy_work(tmp_path):
    cfg = grid_config()
    cfg["prune"]["grid"]["methods"] = ["pip", "slab"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "prune.grid.methods.1 = 'slab' is not allowed" in proc.stdout + proc.stderr
    cfg = grid_config()
    del cfg["prune"]["grid"]
    cfg["prune"].update(unit="width", baselines=["block_influence"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0 and "block_influence prunes whole layers (unit depth) only" in proc.stdout + proc.stderr
    # a width ratio that would leave a layer without attention heads fails in plan_rounds, before any gradient
    cfg["prune"].update(target_ratio=0.4, baselines=[])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--until", "plan_rounds", check=False)
    assert proc.returncode != 0 and "would leave a layer with zero attention heads" in proc.stdout + proc.stderr
    assert not list((tmp_path / "results").rglob("grads_*")) and not (tmp_path / "results/calibration").exists()
    shutil.rmtree(tmp_path / "results", ignore_errors=True)


def test_grid_seeds_and_ratios_expand_to_variants(tmp_path):
    cfg = grid_config()
    cfg["prune"]["grid"] = {"units": ["width", "depth"], "methods": ["random", "pip_oneshot", "block_influence"],
                            "ratios": [0.1, 0.25], "seeds": [1, 2]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run(tmp_path, tmp_path / "config.yaml", "results/summary.tsv")
    plans = [f"{w['unit']}/{w['method']}/r{w['ratio']}" for r, w in jobs if r == "plan_rounds"]
    assert sorted(plans) == sorted(f"{u}/{m}/r{r}" for u in ("width", "depth") for r in ("0.1", "0.25")
                                   for m in ("random_s1", "random_s2", "pip_oneshot", "block_influence")
                                   if not (u == "width" and m == "block_influence"))
    # only pip_oneshot reads gradients: the dense ones, once
    assert sorted(w["view"] for r, w in jobs if r == "collect_gradients") == ["clean", "perturbed"]
    assert not (tmp_path / "results").exists()


def test_score_variants_share_calibration_and_dense_gradients(tmp_path):
    """Issue #8's grid: PIP score variants (pip-SCORE), the forward-only baselines and the noise control in one DAG.
    The dry run lists the calibration, each dense gradient view and the block influence once; forward-only methods
    read the calibration views and no gradient; width-only and depth-only scores are skipped at the other unit."""
    cfg = grid_config()
    names = ["pip", "pip-fisher_diff", "pip-pip_greedy", "pip-noise_control", "pip-fisher_ps", "sleb",
             "block_influence", "block_influence_iter", "taylor_sq", "random"]
    cfg["prune"]["grid"] = {"units": ["depth", "width"], "methods": names}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    jobs = dry_run(tmp_path, tmp_path / "config.yaml", "results/summary.tsv")
    rules = [r for r, _ in jobs]
    views = ["clean", "control", "perturbed", "psdiff"]
    assert sorted(w["view"] for r, w in jobs if r == "collect_gradients") == views
    assert [rules.count(r) for r in ("prepare_model", "prepare_calibration", "block_influence")] == [1, 1, 1]
    plans = sorted(f"{w['unit']}/{w['method']}" for r, w in jobs if r == "plan_rounds")
    assert plans == sorted([f"depth/{m}" for m in names] +
                           [f"width/{m}" for m in ("pip", "pip-fisher_diff", "pip-noise_control", "pip-fisher_ps",
                                                   "taylor_sq", "random")])
    assert not (tmp_path / "results").exists()
    out = snakemake(tmp_path, "-n", "-p", "results/depth/sleb/r0.2/round_1/round.json",
                    config=tmp_path / "config.yaml").stdout
    cmd = next(line for line in out.splitlines() if "pipsteps.prune" in line)
    assert "--calib-clean results/calibration/clean.safetensors" in cmd and "--device" in cmd
    assert "grads_" not in cmd and "--calib-perturbed" not in cmd
    # the per-sample view pairs the clean windows with the perturbed ones; fisher_ps reads only its file
    out = snakemake(tmp_path, "-n", "-p", "results/width/pip-fisher_ps/r0.2/round_1/round.json",
                    config=tmp_path / "config.yaml").stdout
    cmd = next(line for line in out.splitlines() if "pipsteps.gradients" in line)
    assert "--calib results/calibration/clean.safetensors --paired results/calibration/perturbed.safetensors" in cmd
    cmd = next(line for line in out.splitlines() if "pipsteps.prune" in line)
    assert "--psdiff results/base/grads_psdiff.safetensors" in cmd and "--clean" not in cmd


def test_per_sample_score_runs_with_several_perturbation_draws(tmp_path):
    """A real run of width pip-fisher_ps with perturbation.draws = 2: the perturbed view holds 2n rows, the psdiff
    gradient file pairs them with the n clean windows, and the round reads only that file."""
    cfg = grid_config()
    cfg["perturbation"] = {"draws": 2}
    cfg["prune"]["grid"] = {"units": ["width"], "methods": ["pip-fisher_ps"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "results/width/pip-fisher_ps/r0.2/round_1/round.json")
    r = tmp_path / "results"
    calib = json.loads((r / "calibration/calibration.json").read_text())
    assert calib["draws"] == 2 and calib["n_samples"] == cfg["calibration"]["n_samples"]
    grads = json.loads((r / "base/grads_psdiff.json").read_text())
    assert grads["n_samples"] == cfg["calibration"]["n_samples"]
    assert math.isfinite(grads["perturbed_loss"]) and grads["perturbed_loss"] != grads["loss"] > 0
    rnd = json.loads((r / "width/pip-fisher_ps/r0.2/round_1/round.json").read_text())
    assert rnd["score"] == "fisher_ps" and rnd["views"] == ["psdiff"] and rnd["removed_groups"]["channels"]
    assert not (r / "base/grads_clean.safetensors").exists()
