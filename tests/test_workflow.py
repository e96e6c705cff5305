"""The real workflow through the snakemake CLI on a tiny random Llama in a temporary directory."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import E2E, REPO, snakemake


def dry_jobs(workdir: Path, config: Path | None = None) -> dict[str, int]:
    """Job name -> count from a dry run's job-stats table."""
    out = snakemake(workdir, "-n", config=config).stdout
    if "Nothing to be done" in out:
        return {}
    assert "Job stats:" in out, out[-3000:]
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(workdir: Path, cfg: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run_dir(e2e_run: Path) -> Path:
    return e2e_run


def test_lint_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile"),
                           "--configfile", str(E2E)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_snakefmt_check():
    proc = subprocess.run(["snakefmt", "--check", "Snakefile", "workflow"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_output_exists_and_metrics_are_finite(run_dir):
    r = run_dir / "results"
    assert (r / "base/model/model.safetensors").exists()
    for f in ("clean.safetensors", "perturbed.safetensors", "texts.jsonl", "calibration.json"):
        assert (r / "calibration" / f).exists(), f
    for stage in ("base", "depth/pip/r0.2", "depth/random/r0.2"):
        ev = json.loads((r / stage / "eval/metrics.json").read_text())
        assert all(math.isfinite(v) and v > 1 for d in ev["ppl"].values() for v in d.values())
        assert set(ev["ppl"]["heldout"]) == {"16", "64"}
    for method in ("pip", "random"):
        plan = json.loads((r / f"depth/{method}/r0.2/plan.json").read_text())
        assert plan["rounds"] == 2  # tiny model: 2 of 6 layers reach 20% of the parameters
        last = json.loads((r / f"depth/{method}/r0.2/round_2/round.json").read_text())
        assert last["achieved_ratio"] >= 0.2 and last["layers_left"] == 4
        manifest = json.loads((r / f"depth/{method}/r0.2/model/pruning_manifest.json").read_text())
        assert manifest["removed_layers"] == last["removed_layers_so_far"] and len(manifest["kept_layers"]) == 4
        assert all(math.isfinite(s["score"]) for s in last["layer_scores"] if s["score"] is not None)
        # round models are temporary: only the variant's final model stays
        assert not list((r / f"depth/{method}/r0.2").glob("round_*/model"))
    # a later round takes its gradients in its own job, in a temporary directory; the dense model's are kept,
    # shared by every gradient-based variant
    assert sorted(str(p.relative_to(r)) for p in r.rglob("grads_*")) == [
        "base/grads_clean.json", "base/grads_clean.safetensors", "base/grads_perturbed.json",
        "base/grads_perturbed.safetensors"]
    own = json.loads((r / "depth/pip/r0.2/round_2/round.json").read_text())["gradients"]
    assert set(own) == {"clean", "perturbed"} and all(math.isfinite(g["loss"]) for g in own.values())
    assert json.loads((r / "depth/random/r0.2/round_2/round.json").read_text())["gradients"] == {}
    assert not list(run_dir.glob("logs/collect_round_gradients"))
    summary = (r / "summary.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in summary[1:]] == ["dense", "depth/pip/r0.2", "depth/random/r0.2"]
    assert "removed layer(s)" in (run_dir / "logs/prune_round/depth/pip/r0.2/round_2.log").read_text()
    assert (run_dir / "benchmarks/prune_round/depth/pip/r0.2/round_2.tsv").read_text().startswith("s\t")


def test_one_job_per_round(run_dir):
    """Each round is one prune_round job (round 2 took its own gradients); only the dense gradients are a job."""
    # the fixture's complete run is the first Snakemake call in this directory (other tests run more in it later)
    log = min((run_dir / ".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime).read_text()
    table = log.split("Job stats:", 1)[1].split("total", 1)[0]
    jobs = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}
    assert jobs["collect_gradients"] == 2 and "collect_round_gradients" not in jobs
    done = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    assert done.count("prune_round") == 4 and done.count("final_model") == 2  # 2 variants × 2 rounds


def test_kept_round_models_and_gradients_give_the_same_model(run_dir, tmp_path):
    """A fresh run of the PIP variant alone, keeping every round's model and gradients: the same final model."""
    cfg = yaml.safe_load(E2E.read_text())
    cfg["prune"]["keep_round_models"] = True
    cfg["gradients"] = {"keep": True}
    snakemake(tmp_path, "results/depth/pip/r0.2/model", config=write_config(tmp_path, cfg))
    work = tmp_path
    v = work / "results/depth/pip/r0.2"
    assert (v / "round_1/model").is_dir() and (v / "round_2/model").is_dir()
    assert sorted(p.name for p in (v / "round_2").glob("grads_*")) == ["grads_clean.safetensors",
                                                                       "grads_perturbed.safetensors"]
    assert not list(v.glob("round_1/grads_*"))  # round 1 read the dense model's
    ref = run_dir / "results/depth/pip/r0.2/model"
    for name in ("pruning_manifest.json", "model.safetensors"):
        assert (v / "model" / name).read_bytes() == (ref / name).read_bytes(), name
    assert (v / "model/model.safetensors").stat().st_ino == (v / "round_2/model/model.safetensors").stat().st_ino


def test_pruned_model_loads_with_plain_from_pretrained(run_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "results/depth/pip/r0.2/model")
    assert model.config.num_hidden_layers == 4


def test_second_run_has_nothing_to_do(run_dir):
    assert "Nothing to be done" in snakemake(run_dir, "-n").stdout


def test_changing_eval_settings_reruns_only_evaluation_and_summary(run_dir):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["eval"]["max_tokens"] = 256
    alt = run_dir / "eval-changed.yaml"
    alt.write_text(yaml.safe_dump(cfg))
    assert dry_jobs(run_dir, alt) == {"evaluate_ppl": 3, "summarize": 1, "plot_results": 1, "track_mlflow": 1,
                                      "all": 1}


def test_changing_target_ratio_keeps_model_calibration_and_dense_gradients(run_dir):
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["prune"]["target_ratio"] = 0.4
    alt = run_dir / "ratio-changed.yaml"
    alt.write_text(yaml.safe_dump(cfg))
    jobs = dry_jobs(run_dir, alt)
    assert jobs.get("plan_rounds") == 2 and jobs.get("summarize") == 1, jobs
    assert "prepare_model" not in jobs and "prepare_calibration" not in jobs
    assert "collect_gradients" not in jobs  # round-1 gradients of the dense model are reused


def test_unknown_key_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load(E2E.read_text())
    cfg["prune"]["layers_per_rund"] = 2
    proc = snakemake(tmp_path, "-n", config=write_config(tmp_path, cfg), check=False)
    assert proc.returncode != 0
    assert "unknown key prune.layers_per_rund" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("change,message", [
    ({"prune": {"target_ratio": 1.5}}, "prune.target_ratio"),
    ({"model": {"source": "./no/such/model"}}, "model path does not exist: ./no/such/model"),
    ({"calibration": {"source": "/no/such/file.txt"}}, "file not found: /no/such/file.txt"),
])
def test_bad_config_values_fail_at_parse_time(tmp_path, change, message):
    cfg = yaml.safe_load(E2E.read_text())
    for section, values in change.items():
        cfg[section].update(values)
    proc = snakemake(tmp_path, "-n", config=write_config(tmp_path, cfg), check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr


def test_unreachable_ratio_and_short_calibration_fail_before_gradients(tmp_path):
    cfg = yaml.safe_load(E2E.read_text())
    cfg["prune"].update(target_ratio=0.9, depth={"protect_first": 2, "protect_last": 2})
    short = tmp_path / "short.txt"
    short.write_text("a few words only\n")
    proc = snakemake(tmp_path, "--until", "plan_rounds", config=write_config(tmp_path, cfg), check=False)
    assert proc.returncode != 0 and "is unreachable" in proc.stdout + proc.stderr
    cfg = yaml.safe_load(E2E.read_text())
    cfg["calibration"]["source"] = str(short)
    proc = snakemake(tmp_path, "--until", "prepare_calibration", config=write_config(tmp_path, cfg), check=False)
    assert proc.returncode != 0 and "calibration text too short" in proc.stdout + proc.stderr
    assert not (tmp_path / "results/calibration/clean.safetensors").exists()
