"""A damaged pruning_manifest.json is refused with one line naming the file: truncated (not JSON), or listing
layers that the base model does not have."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipsteps.io import PipError
from pipsteps.surgery import MANIFEST, load_pruned, read_manifest


@pytest.fixture
def model_dir(tiny_dir, tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_dir, d)
    return d


def edit_manifest(d: Path, **changes) -> Path:
    manifest = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text(json.dumps({**manifest, **changes}))
    return d / MANIFEST


def test_truncated_manifest_is_one_line_naming_the_file(model_dir, tmp_path):
    f = model_dir / MANIFEST
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(PipError, match=rf"^{f} is not valid JSON: "):
        load_pruned(model_dir)
    with pytest.raises(PipError, match=rf"^{f} is not valid JSON: "):
        read_manifest(model_dir)  # what the prune round and LoRA recovery read
    proc = subprocess.run([sys.executable, "-m", "pipsteps.evaluate", "--model", str(model_dir), "--metrics",
                           str(tmp_path / "m.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"ERROR: {f} is not valid JSON: ")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("changes, outside", [
    ({"kept_layers": [0, 1, 2, 3, 4, 6]}, [6]),  # a layer index the 6-layer base model does not have
    ({"kept_layers": [-1, 1, 2, 3, 4, 5]}, [-1]),
    ({"base_num_hidden_layers": 4}, [4, 5]),  # the manifest of a bigger model
    ({"kept_layers": [0, 1, 2, 3, 4], "removed_layers": [9]}, [9]),
])
def test_layers_outside_the_base_model_are_refused(model_dir, changes, outside):
    f = edit_manifest(model_dir, **changes)
    message = rf"^{f} lists layer\(s\) {outside} outside the base model, which has \d+ layers"
    with pytest.raises(PipError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_pruned(model_dir)
    with pytest.raises(PipError, match="outside the base model"):
        read_manifest(model_dir)


@pytest.mark.parametrize("changes, message", [
    ({"kept_layers": [0, 1, 2, 3, 4], "removed_layers": [4]}, r"lists layer\(s\) \[4\] more than once"),
    ({"kept_layers": [0, 1, 1, 3, 4, 5]}, r"lists layer\(s\) \[1\] more than once"),
    ({"kept_layers": "all"}, "must be a layer count and kept_layers/removed_layers lists of layer indices"),
    ({"base_num_hidden_layers": None}, "must be a layer count"),
])
def test_malformed_layer_lists_are_refused(model_dir, changes, message):
    edit_manifest(model_dir, **changes)
    with pytest.raises(PipError, match=message):
        load_pruned(model_dir)


def test_a_valid_pruned_manifest_still_loads(model_dir):
    from pipsteps.surgery import load_tokenizer
    from pipsteps.surgery import remove_layers, save_pruned

    model = load_pruned(model_dir)
    remove_layers(model, [1, 4])
    manifest = read_manifest(model_dir) | {"kept_layers": [0, 2, 3, 5], "removed_layers": [4, 1]}
    save_pruned(model, load_tokenizer(model_dir), model_dir.parent / "pruned", manifest)
    assert len(load_pruned(model_dir.parent / "pruned").model.layers) == 4
