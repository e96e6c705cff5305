"""Bad files, full disks, numeric faults, determinism and safety: each fails clearly and leaves nothing half-written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from pipsteps.grads import GradConfig, collect, load_ids
from pipsteps.errors import PipError
from pipsteps.files import write_json
from pipsteps.prepare_model import PrepareConfig
from pipsteps.prepare_model import run as prepare
from pipsteps.prune import PruneConfig
from pipsteps.prune import run as prune
from pipsteps.scores import layer_stats
from pipsteps.surgery import MANIFEST, load_pruned
from pipsteps.tiny import tiny_model

REPO = Path(__file__).resolve().parents[2]


def test_truncated_model_weights_name_the_file(tiny_dir, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(PipError, match=f"could not load model from {re.escape(str(bad))}"):
        load_pruned(bad)


def test_corrupted_gradient_and_calibration_files_name_the_file(tmp_path):
    junk = tmp_path / "grads_clean.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(PipError, match="corrupted or unreadable safetensors file .*grads_clean"):
        layer_stats(tiny_model("llama"), junk, None)
    with pytest.raises(PipError, match="corrupted or unreadable safetensors file"):
        load_ids(junk)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(PipError, match="has no input_ids tensor"):
        load_ids(other)


def test_gradients_of_another_model_are_refused(tmp_path):
    grads = tmp_path / "g.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}, str(grads))
    with pytest.raises(PipError, match="has no tensor model.layers.0.self_attn"):
        layer_stats(tiny_model("llama"), grads, None)


def test_manifest_that_does_not_match_the_weights(tiny_dir, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["kept_layers"] = manifest["kept_layers"][:-1]
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PipError, match=f"{MANIFEST} does not match the model: it keeps 5 layers, config.json has 6"):
        load_pruned(bad)


def test_pickle_only_checkpoints_are_never_loaded(tiny_dir, tmp_path):
    """A directory with only pytorch_model.bin (a pickle) is refused instead of unpickled."""
    d = tmp_path / "bin_only"
    d.mkdir()
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    (d / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(PipError, match="no safetensors weights"):
        load_pruned(d)
    with pytest.raises(PipError, match="could not load model"):
        prepare(PrepareConfig(source=str(d)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_unpickling_anywhere_in_the_code():
    code = "\n".join(p.read_text() for p in (REPO / "pipsteps").glob("*.py"))
    assert not re.search(r"^\s*(import pickle|from pickle|import dill)|pickle\.loads?\(", code, re.M)
    assert all("weights_only=True" in call for call in re.findall(r"torch\.load\([^)]*\)", code))
    assert "trust_remote_code=True" not in code


def test_disk_full_while_saving_leaves_nothing(tmp_path):
    """RLIMIT_FSIZE makes writes past 64 kB fail with EFBIG, like a full disk (Python ignores SIGXFSZ)."""
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from pipsteps.io import PipError
        from pipsteps.prepare_model import PrepareConfig, run
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            run(PrepareConfig(source="tiny:llama"), Path({str(tmp_path / 'model')!r}))
        except PipError as e:
            print("PIPERROR", e)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "could not write" in proc.stdout and "disk full?" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # neither the model nor a partial directory


def test_stale_partial_from_a_killed_writer_is_cleaned(tmp_path):
    stale = tmp_path / ".m.json.abc123.partial"
    stale.mkdir()
    (stale / "m.json").write_text("{half")
    write_json(tmp_path / "m.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_fp16_overflow_is_named():
    model = tiny_model("llama", seed=0).half()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(300.0)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(PipError, match=r"non-finite (loss|gradient) .*round 2, view perturbed"):
        collect(model, ids, GradConfig(round=2, view="perturbed"))


def test_prune_rounds_are_bit_identical_across_reruns(tiny_dir, tmp_path):
    from pipsteps.plan import PlanConfig
    from pipsteps.plan import run as plan

    p = plan(PlanConfig(target_ratio=0.2), tiny_dir)
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(1))
    grads, _ = collect(load_pruned(tiny_dir), ids, GradConfig())
    save_file(grads, str(tmp_path / "c.safetensors"))
    save_file({k: v * 0.9 for k, v in grads.items()}, str(tmp_path / "p.safetensors"))
    for method in ("pip", "random"):
        outs = []
        for k in range(2):
            prune(PruneConfig(method=method, seed=5), tiny_dir, p, tmp_path / f"{method}{k}",
                  {"clean": tmp_path / "c.safetensors", "perturbed": tmp_path / "p.safetensors"}, "hash")
            outs.append((tmp_path / f"{method}{k}" / MANIFEST).read_bytes())
            outs.append((tmp_path / f"{method}{k}" / "model.safetensors").read_bytes())
        assert outs[0] == outs[2] and outs[1] == outs[3]


def test_experiment_name_cannot_escape_the_working_directory():
    from pipsteps.config import ConfigError, check_config

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experiment"] = "../../etc"
    with pytest.raises(ConfigError, match="experiment"):
        check_config(cfg, REPO / "workflow/schemas/config.schema.yaml")
