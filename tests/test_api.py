"""The public Python API (`import pipsteps`): its names, a lazy import that keeps torch out of the Snakefile's parse
time, what `removed` reports for width and depth manifests, and the usage snippet of docs/usage.md (also the README's,
when the README carries the same marker) run verbatim on a width variant written by the real workflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

import pipsteps

MARKER = "<!-- snippet: load-pruned"


def snippet(doc: Path) -> str | None:
    """The ```python block that follows the marker line in `doc` (None when the marker is absent)."""
    text = doc.read_text(encoding="utf-8")
    if MARKER not in text:
        return None
    m = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.S)
    assert m, f"{doc}: no ```python block after {MARKER}"
    return m.group(1)


def test_public_names():
    from pipsteps import PipError, Removal, final_model, load_pruned, read_manifest, removed
    from pipsteps.io import PipError as io_error
    from pipsteps.pruned import Removal as removal_cls
    from pipsteps.pruned import final_model as final_fn
    from pipsteps.pruned import removed as removed_fn
    from pipsteps.surgery import load_pruned as load_fn
    from pipsteps.surgery import read_manifest as read_fn

    assert (load_pruned, read_manifest, final_model, removed, Removal, PipError) == (
        load_fn, read_fn, final_fn, removed_fn, removal_cls, io_error)
    assert sorted(pipsteps.__all__) == ["PipError", "Removal", "__version__", "final_model", "load_pruned",
                                        "read_manifest", "removed"]
    assert set(pipsteps.__all__) <= set(dir(pipsteps))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert pipsteps.__version__ == version("pipsteps") == pyproject
    with pytest.raises(AttributeError, match="module 'pipsteps' has no attribute 'no_such_name'"):
        pipsteps.no_such_name  # noqa: B018


def parse_time_imports() -> list[str]:
    """The `from pipsteps... import ...` lines of the Snakefile and the rule files (run when the workflow is parsed)."""
    lines = []
    for f in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        lines += [m.group(0) for m in re.finditer(r"^(?:from pipsteps[\w.]* import .+|import pipsteps[\w.]*)$",
                                                  f.read_text(), re.M)]
    return lines


def test_import_is_lazy():
    """A fresh interpreter: the package and the modules the workflow imports at parse time load no torch; the first
    use of a name that needs torch loads it."""
    imports = parse_time_imports()
    assert any("pipsteps.config" in line for line in imports), imports
    code = "\n".join(["import sys", "import pipsteps", *imports]) + """
from pipsteps import final_model, removed, methods
heavy = [m for m in ("torch", "transformers", "lm_eval", "datasets") if m in sys.modules]
assert not heavy, heavy
assert methods is sys.modules["pipsteps.methods"]
from pipsteps import load_pruned
assert "torch" in sys.modules and load_pruned.__module__ == "pipsteps.surgery"
print("ok", pipsteps.__version__)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", pipsteps.__version__]


def test_removed_on_a_width_and_depth_pruned_tiny_model(tmp_path):
    """Original indices, also after a layer was removed before the width cut, and through save_pruned's file."""
    from pipsteps import load_pruned, removed
    from pipsteps.surgery import new_manifest, remove_layers, save_pruned
    from pipsteps.tiny import tiny_model, tiny_tokenizer
    from pipsteps.width import prune_width

    model, manifest = tiny_model("llama", seed=3), new_manifest(6)
    remove_layers(model, [1])  # original layer 1; current index i is original i + 1 from here on
    manifest.update(kept_layers=[0, 2, 3, 4, 5], removed_layers=[1])
    # current layer 1 (original 2): KV group 0 with its query heads 0, 1; channels in current layers 0 and 3
    prune_width(model, manifest, {1: [0]}, {0: [5, 127], 3: list(range(10))})
    save_pruned(model, tiny_tokenizer(), tmp_path / "m", manifest)
    r = removed(tmp_path / "m")
    assert r.num_layers == 6 and r.layers == (1,)
    assert r.kv_heads == {2: (0,)} and r.heads == {2: (0, 1)}
    assert r.channels == {0: (5, 127), 4: tuple(range(10))}
    assert str(r) == ("removed 1 of 6 decoder layers [1]; 1 of 10 KV groups (2 query heads) in 1 layer; "
                      "12 of 640 MLP channels in 2 layers")
    assert removed(json.loads((tmp_path / "m/pruning_manifest.json").read_text())) == r
    assert sum(p.numel() for p in load_pruned(tmp_path / "m").parameters()) == sum(
        p.numel() for p in model.parameters())


def test_removed_and_final_model_errors(tiny_dir, tmp_path):
    from pipsteps import PipError, final_model, removed

    dense = removed(tiny_dir)  # prepare_model writes the manifest of an unpruned model
    assert (dense.layers, dense.kv_heads, dense.channels) == ((), {}, {})
    assert str(dense) == "removed 0 of 6 decoder layers"
    with pytest.raises(PipError, match="no pruning_manifest.json in"):
        removed(tmp_path)
    with pytest.raises(PipError, match=r"no plan.json in .*\(expected a variant directory"):
        final_model(tmp_path)
    (tmp_path / "plan.json").write_text('{"rounds": 3}')
    (tmp_path / "round_3/model").mkdir(parents=True)  # a kept round model is not the variant's final model
    with pytest.raises(PipError, match=r"/model does not exist yet: the variant's rounds have not all run"):
        final_model(tmp_path)


@pytest.fixture(scope="module")
def width_run(grid_run) -> Path:
    """A run directory written by the real workflow that holds width PIP in two rounds: the session's grid run
    (tests/conftest.py: depth and width × pip, block_influence, random on the tiny model, width.rounds 2). The
    snippet only reads it."""
    work, _ = grid_run
    plan = json.loads((work / "results/width/pip/r0.2/plan.json").read_text())
    assert plan["rounds"] == 2, plan
    return work


def test_usage_snippet_runs_on_a_workflow_model(width_run):
    """docs/usage.md's snippet, verbatim, in a fresh interpreter in the run directory; the README's copy (once it
    carries the marker) must be the same block."""
    from pipsteps import load_pruned, removed

    code = snippet(REPO / "docs" / "usage.md")
    assert code and 'final_model("results/width/pip/r0.2")' in code
    readme = snippet(REPO / "README.md")
    assert readme in (None, code), "README.md's load-pruned snippet differs from docs/usage.md's"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=width_run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text, summary, record = proc.stdout.rstrip("\n").split("\n")[-3:]
    path = width_run / "results/width/pip/r0.2/model"
    assert text.startswith("A list in Python is") and len(text) > len("A list in Python is")
    assert summary == str(removed(path)) and re.fullmatch(
        r"removed 0 of 6 decoder layers; [1-9]\d* of \d+ KV groups \(\d+ query heads\) in \d+ layers?; "
        r"[1-9]\d* of \d+ MLP channels in \d+ layers?", summary), summary
    assert record == "width pip 0.2 2 rounds"
    params = sum(p.numel() for p in load_pruned(path).parameters())
    assert params == json.loads((path.parent / "round_2/round.json").read_text())["params_after"]
