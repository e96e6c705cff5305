"""A step's outputs become final together: a step SIGKILLed after it wrote one output (the gradient tensors, the
pruned model) but before its metrics JSON leaves no final output at all, only hidden partial files that the next
attempt removes; the rerun writes them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import save_file

from pipsteps.errors import PipError
from pipsteps.files import atomic_outputs
from pipsteps.io import open_safetensors

# Runs a step's main with one function (of the step, or `module.function` of another pipsteps module) replaced by a
# SIGKILL of the process (a preempted node).
KILLER = """
import os, signal, sys, importlib
step = importlib.import_module("pipsteps." + sys.argv[1])
where, name = sys.argv[2].rsplit(".", 1) if "." in sys.argv[2] else (sys.argv[1], sys.argv[2])
setattr(importlib.import_module("pipsteps." + where), name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
step.main(sys.argv[3:])
"""


def killed_at(module: str, function: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, module, function, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def final_entries(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "clean.safetensors"
    save_file({"input_ids": torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))}, str(path))
    return path


@pytest.mark.parametrize("kill_in", ["grads.layer_norms", "write_json"])  # computing the metrics / writing the JSON
def test_gradient_step_killed_before_its_metrics_leaves_no_final_output(kill_in, tiny_dir, calib, tmp_path):
    out = tmp_path / "grads" / "grads_clean.safetensors"
    metrics = tmp_path / "grads" / "grads_clean.json"
    args = ["--model", str(tiny_dir), "--calib", str(calib), "--micro-batch", "2", "--threads", "1",
            "--out", str(out), "--metrics", str(metrics)]
    killed_at("gradients", kill_in, args)
    # the tensors were complete (written before the kill) but are not final: nothing looks like a finished job
    assert final_entries(out.parent) == set()
    partial = [p for p in out.parent.iterdir() if p.name.startswith(".grads_clean.safetensors.")]
    assert partial and all(p.name.endswith(".partial") for p in partial)
    from pipsteps.gradients import main

    main(args)  # the rerun cleans the partial files up and writes both outputs
    assert final_entries(out.parent) == {"grads_clean.safetensors", "grads_clean.json"}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    record = json.loads(metrics.read_text())
    with open_safetensors(out) as f:
        assert float(f.metadata()["loss"]) == pytest.approx(record["loss"]) and len(f.keys()) > 0
    assert record["config"]["micro_batch"] == 2


def test_prune_round_killed_before_its_round_json_leaves_no_model(tiny_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"unit": "depth", "rounds": 1, "per_round": [1], "protect_first": 0,
                                "protect_last": 0, "target_ratio": 0.2, "params_total": 1}))
    rnd = tmp_path / "round_1"
    args = ["--method", "random", "--model", str(tiny_dir), "--plan", str(plan), "--out", str(rnd / "model"),
            "--metrics", str(rnd / "round.json")]
    killed_at("prune", "write_json", args)  # the pruned model is saved (to its temporary name) by then
    assert final_entries(rnd) == set()
    from pipsteps.prune import main

    main(args)
    assert final_entries(rnd) == {"model", "round.json"}
    assert (rnd / "model/pruning_manifest.json").exists() and not [p for p in rnd.iterdir() if p.name[0] == "."]


def test_atomic_outputs_rename_in_order_and_only_on_success(tmp_path):
    renamed: list[str] = []
    real = os.replace

    def spy(src, dst):
        renamed.append(Path(dst).name)
        real(src, dst)

    with mock.patch("pipsteps.files.os.replace", side_effect=spy):
        with atomic_outputs(tmp_path / "tensors", None, tmp_path / "metrics.json") as (a, none, b):
            assert none is None
            a.mkdir()
            (a / "x").write_text("1")
            b.write_text("{}")
            assert final_entries(tmp_path) == set()
    assert renamed == ["tensors", "metrics.json"]  # the record that marks the step done comes last
    assert final_entries(tmp_path) == {"tensors", "metrics.json"}
    with pytest.raises(RuntimeError):
        with atomic_outputs(tmp_path / "a.bin", tmp_path / "a.json") as (a, b):
            a.write_text("complete")
            raise RuntimeError("the metrics could not be computed")
    assert final_entries(tmp_path) == {"tensors", "metrics.json"} and not list(tmp_path.glob(".*"))
    with pytest.raises(PipError, match="could not write"):  # a write error names the output
        with atomic_outputs(tmp_path / "b.json") as (b,):
            b.parent.joinpath("missing-dir", "x").write_text("")
