"""The GPU path at workflow level: compute.* options reach the rules' commands, and bench/gpu_scale.py end to end
on a tiny random Llama (CPU), and on CUDA when there is one."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_scale.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench/gpu_scale.py"), "--shape", "tiny", "--layers", "5",
                           "--n-samples", "4", "--seq-len", "16", "--micro-batch", "2", "--threads", "2",
                           "--out", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "whole pruning" in proc.stdout and "gradients / floor =" in proc.stdout
    return json.loads(out.read_text())


def check(r: dict) -> None:
    assert r["layers"] == 5 and r["settings"]["target_ratio"] == 0.2
    assert len(r["rounds"]) == 2 and len(set(r["removed_layers"])) == 2  # 20 % of a 5-layer model: 2 layers
    grads = [s for s in r["steps"] if s["step"] == "gradients"]
    assert [(s["round"], s["view"]) for s in grads] == [(1, "clean"), (1, "perturbed"), (2, "clean"), (2, "perturbed")]
    assert [s["step"] for s in r["steps"]].count("prune") == 2
    assert r["gradient_s"] == pytest.approx(sum(s["wall_s"] for s in grads), abs=0.02)
    assert 0 < r["gradient_s"] <= r["pruning_s"]
    # floor: per round, both views read the weights twice and write the layer gradients once (dtype bytes each)
    bpp = {"float32": 4, "bfloat16": 2}[r["dtype"]]
    total, per_layer, n = r["params_total"], r["params_per_layer"], r["layers"]
    assert r["floor_bytes"] == sum(2 * (2 * (total - k * per_layer) + (n - k) * per_layer) * bpp for k in (0, 1))
    assert r["floor_s"] == pytest.approx(r["floor_bytes"] / (r["bandwidth_gbs"] * 1e9), rel=1e-2)
    assert r["gradient_to_floor"] == pytest.approx(r["gradient_s"] / r["floor_s"], rel=1e-2)


def test_bench_on_cpu(tmp_path):
    r = bench(tmp_path, "--device", "cpu", "--bandwidth-gbs", "10")
    check(r)
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["bandwidth_source"] == "given"
    assert r["peak_gpu_mb"] == 0.0 and r["max_rss_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_on_cuda(tmp_path):
    r = bench(tmp_path, "--require-gpu")
    check(r)
    assert r["device"].startswith("cuda") and r["dtype"] == "bfloat16" and r["peak_gpu_mb"] > 0
    assert r["bandwidth_source"] == "measured copy" and r["bandwidth_gbs"] > 100


def test_compute_options_reach_the_gpu_rules(tmp_path):
    """A dry run prints the commands: the config's compute.* keys become the steps' flags."""
    import yaml

    from conftest import E2E, snakemake

    cfg = yaml.safe_load(E2E.read_text())
    cfg["compute"] = {"require_gpu": True, "lean_grads": False, "grad_checkpointing": True, "device_map": "balanced"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "-n", "-p", "results/base/grads_clean.json", "results/base/grads_perturbed.json",
                     "results/base/eval/metrics.json")
    out = proc.stdout + proc.stderr
    grads = [line for line in out.splitlines() if "python -m pipsteps.gradients" in line]
    evals = [line for line in out.splitlines() if "python -m pipsteps.evaluate" in line]
    assert len(grads) == 2 and evals  # dense model: clean and perturbed views; dense evaluation
    for line in grads + evals:
        args = shlex.split(line.split("Shell command:", 1)[-1])
        flags = {a: b for a, b in zip(args, args[1:])}
        assert {k: flags[k] for k in ("--device", "--dtype", "--device-map", "--require-gpu")} == {
            "--device": "auto", "--dtype": "auto", "--device-map": "balanced", "--require-gpu": "True"}, line
    for line in grads:
        assert "--lean False --checkpointing True" in line, line
