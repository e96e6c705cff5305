"""Compute settings reach every step that can run on a GPU: with compute.require_gpu on a machine without CUDA,
LoRA recovery and the forward-only depth scores fail with one line instead of falling back to the CPU. And a
step's code inputs are every pipsteps module it imports (pipsteps.deps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipsteps import deps

REPO = Path(__file__).resolve().parents[2]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")


def step(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"pipsteps.{module}", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "clean.safetensors"
    save_file({"input_ids": torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))}, str(path))
    return path


@no_cuda
@pytest.mark.parametrize("method", ["sleb", "block_influence_iter", "pip-gap_greedy", "recover", "block_influence"])
def test_require_gpu_is_refused_without_cuda(method, tiny_dir, calib, tmp_path):
    out, metrics = tmp_path / "out", tmp_path / "out.json"
    if method == "recover":
        data = tmp_path / "data.txt"
        data.write_text("some text to train on\n" * 50)
        proc = step("recover", "--require-gpu", "true", "--source", str(data), "--model", str(tiny_dir),
                    "--out", str(out), "--adapter", str(tmp_path / "adapter"), "--metrics", str(metrics))
    elif method == "block_influence":
        proc = step("block_influence", "--require-gpu", "true", "--model", str(tiny_dir), "--calib", str(calib),
                    "--out", str(metrics))
    else:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"unit": "depth", "rounds": 1, "per_round": [1], "protect_first": 0,
                                    "protect_last": 0, "target_ratio": 0.2, "params_total": 1}))
        proc = step("prune", "--method", method, "--device", "auto", "--require-gpu", "true", "--model",
                    str(tiny_dir), "--plan", str(plan), "--calib-clean", str(calib), "--calib-perturbed", str(calib),
                    "--out", str(out), "--metrics", str(metrics))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "ERROR: compute.require_gpu is true but CUDA is not available"), proc.stderr[-2000:]
    assert not out.exists() and not metrics.exists() and not (tmp_path / "adapter").exists()


def test_a_gradient_score_ignores_require_gpu(tiny_dir, tmp_path):
    """Only the forward-only scores run a model in the prune step: the others read files and need no GPU."""
    from pipsteps.prune import PruneConfig, run

    plan = {"unit": "depth", "rounds": 1, "per_round": [1], "protect_first": 0, "protect_last": 0,
            "target_ratio": 0.2, "params_total": 1}
    rec = run(PruneConfig(method="random", device="auto", require_gpu=True), tiny_dir, plan, tmp_path / "model")
    assert len(rec["removed"]) == 1


def test_step_code_is_the_transitive_import_closure():
    pkg = REPO / "pipsteps"
    prune = set(deps.step_modules("prune", str(pkg)))
    assert {"prune", "scores", "width_scores", "width", "surgery", "io", "methods", "ablation", "grads", "cli",
            "compute", "errors"} <= prune
    assert not {"plots", "summarize", "tracking", "recover", "evaluate", "plan", "gradients",
                "block_influence"} & prune
    recover = set(deps.step_modules("recover", str(pkg)))
    assert {"recover", "recovery_data", "recovery_state", "textdata", "io", "surgery"} <= recover
    assert "zeroshot_tasks" in deps.step_modules("zeroshot", str(pkg))
    # prepare_model imports tiny lazily, inside a function: function-level imports count, since they run
    assert "tiny" in deps.direct_imports(pkg / "prepare_model.py")
    assert deps.step_files("plan", pkg) == [f"{pkg}/{m}.py" for m in deps.step_modules("plan", str(pkg))]
    assert all(Path(f).is_file() for f in deps.step_files("prune", pkg))


def test_import_forms_are_all_found(tmp_path):
    pkg = tmp_path / "pipsteps"
    pkg.mkdir()
    (pkg / "a.py").write_text("import pipsteps.b\nfrom pipsteps import c, not_a_module\nfrom . import d\n"
                              "from .e import x\n\ndef f():\n    from pipsteps.g import y\n")
    for name in "bcdeg":
        (pkg / f"{name}.py").write_text("import os\n" + ("from pipsteps.h import z\n" if name == "g" else ""))
    (pkg / "h.py").write_text("from pipsteps import a\n")  # a cycle ends
    (pkg / "unused.py").write_text("")
    (pkg / "__init__.py").write_text('_EXPORTS = {"api": "pipsteps.lazy"}\n')
    (pkg / "lazy.py").write_text("")
    # not_a_module is a name of the package's lazy public API: __init__ counts, with the module it names
    assert deps.step_modules("a", str(pkg)) == ("__init__", "a", "b", "c", "d", "e", "g", "h", "lazy")
    (pkg / "user.py").write_text("from pipsteps import api, b\n")
    assert deps.step_modules("user", str(pkg)) == ("__init__", "b", "lazy", "user")
    with pytest.raises(FileNotFoundError):
        deps.step_modules("missing", str(pkg))
