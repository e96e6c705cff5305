"""Shared fixtures: repo paths and a prepared tiny model directory (built from a config in seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A prepared tiny:llama model directory (6 layers, trained BPE tokenizer)."""
    from pipsteps.prepare_model import PrepareConfig, run

    out = tmp_path_factory.mktemp("tiny") / "model"
    run(PrepareConfig(source="tiny:llama"), out)
    return out


@pytest.fixture(scope="session")
def smol(tmp_path_factory) -> tuple[Path, dict]:
    """The embedded SmolLM2-135M prepared once per session (about 30 s): (directory holding `model/`, prepare info).
    Tests read `model/` and write only their own files beside it."""
    from pipsteps.prepare_model import PrepareConfig, run

    d = tmp_path_factory.mktemp("smol")
    info = run(PrepareConfig(source="embedded:smollm2"), d / "model")
    return d, info


E2E = REPO / "tests" / "e2e" / "config.yaml"


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True):
    """Run the real workflow through the snakemake CLI in `workdir` (default profile, 2 cores)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config or workdir / "config.yaml"),
           "--workflow-profile", str(REPO / "profiles" / "default"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def e2e_run(tmp_path_factory) -> Path:
    """One complete, uninterrupted run of the tiny end-to-end workflow (shared by the workflow and fault tests)."""
    import shutil

    workdir = tmp_path_factory.mktemp("e2e")
    shutil.copy(E2E, workdir / "config.yaml")
    snakemake(workdir)
    return workdir
