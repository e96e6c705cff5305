"""Killed jobs (SIGKILL, like a preempted node): no output looks complete, and `snakemake --unlock` followed by a
plain rerun (the profile sets rerun-incomplete) finishes with results equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import E2E, REPO, TEST_CORES, snakemake
from pipsteps.io import open_safetensors


def kill_tree_in(workdir: Path) -> None:
    """SIGKILL every process whose working directory is `workdir` (snakemake and the jobs it started)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve() and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def run_until_killed(workdir: Path, started: str, grace_s: float) -> None:
    """Start the workflow, wait until the job writing the log file `started` runs, then SIGKILL everything."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"),
           "--workflow-profile", str(REPO / "profiles/default"), *TEST_CORES]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (workdir / started).exists():
        assert proc.poll() is None, "workflow ended before the job to kill started"
        assert time.time() < deadline, f"{started} never appeared"
        time.sleep(0.2)
    time.sleep(grace_s)  # the job is importing torch / computing
    kill_tree_in(workdir)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def assert_nothing_looks_complete(results: Path) -> None:
    """Every gradient file that exists is a complete, readable safetensors file; every model dir is loadable."""
    for f in results.rglob("grads_*.safetensors"):
        with open_safetensors(f) as g:
            assert len(g.keys()) > 0
    for d in [*results.rglob("round_*/model"), *results.glob("*/*/r*/model")]:
        assert (d / "model.safetensors").exists() and (d / "pruning_manifest.json").exists(), d


def test_killed_jobs_rerun_to_the_uninterrupted_result(e2e_run, tmp_path):
    # the e2e config without the efficiency measurement and the MLflow import: they follow the compared outputs
    # (pruned models, perplexities), which do not depend on them, and are neither killed nor compared here
    cfg = yaml.safe_load(E2E.read_text())
    cfg["eval"]["efficiency"] = {**cfg["eval"]["efficiency"], "enabled": False}
    cfg["mlflow"] = {"enabled": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    # 1) preempted while the dense model's gradients are computed
    run_until_killed(tmp_path, "logs/collect_gradients/base/clean.log", grace_s=2.0)
    assert_nothing_looks_complete(tmp_path / "results")
    assert not (tmp_path / "results/summary.tsv").exists()
    locked = snakemake(tmp_path, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(tmp_path, "--unlock")
    # 2) preempted again, in the middle of the first prune round
    run_until_killed(tmp_path, "logs/prune_round/depth/pip/r0.2/round_1.log", grace_s=3.0)
    assert_nothing_looks_complete(tmp_path / "results")
    snakemake(tmp_path, "--unlock")
    # 3) a plain rerun completes
    snakemake(tmp_path)
    assert not list((tmp_path / "results").rglob("*.partial"))
    for stage in ("depth/pip/r0.2", "depth/random/r0.2"):
        got = json.loads((tmp_path / f"results/{stage}/model/pruning_manifest.json").read_text())
        ref = json.loads((e2e_run / f"results/{stage}/model/pruning_manifest.json").read_text())
        assert got == ref  # same removed layers, same scores, bit for bit
    for stage in ("base", "depth/pip/r0.2", "depth/random/r0.2"):
        got = json.loads((tmp_path / f"results/{stage}/eval/metrics.json").read_text())["ppl"]
        ref = json.loads((e2e_run / f"results/{stage}/eval/metrics.json").read_text())["ppl"]
        assert got.keys() == ref.keys()
        for ds in ref:
            assert got[ds] == pytest.approx(ref[ds], rel=1e-9)
