"""Shared fixtures (repo paths, a prepared tiny model directory built from a config in seconds, the tiny workflow run)
and the rule for tests that need something outside the repository.

Two markers name such needs:
- `shared_data`: the real evaluation files in ../shared/data (or $PIPSTEPS_SHARED_DATA);
- `slurm`: a SLURM installation (munged, slurmctld, slurmd, sbatch, ...) and root, to start a one-node cluster
  (tests/slurm/local_slurm.sh; tests/slurm/install_slurm.sh installs SLURM, a step of .ci/run).
When the need is missing such a test is skipped with the reason, except under CI=true: there a missing data folder
or a missing SLURM fails the test, so CI never passes by skipping them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PIPSTEPS_SHARED_DATA") or REPO.parent / "shared" / "data")
FIXTURES = REPO / "tests" / "fixtures"
SLURM_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def shared_data_missing() -> str | None:
    """Why the real data cannot be used, or None."""
    if not (SHARED_DATA / "SOURCES.md").exists():
        return f"needs the real evaluation data in {SHARED_DATA} (not found; set PIPSTEPS_SHARED_DATA to its path)"
    return None


def slurm_missing() -> str | None:
    """Why the local SLURM cluster cannot be started, or None."""
    absent = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if absent:
        return (f"needs SLURM ({', '.join(absent)} not found); install it with `sudo bash "
                f"tests/slurm/install_slurm.sh` (Debian/Ubuntu)")
    if os.geteuid() != 0:
        return "needs root: starts munged, slurmctld and slurmd and writes /etc/slurm"
    return None


NEEDS = {"shared_data": shared_data_missing, "slurm": slurm_missing}


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data: needs the real evaluation data in ../shared/data "
                                       "(skipped without it; a failure under CI=true)")
    config.addinivalue_line("markers", "slurm: needs SLURM and root for a local cluster "
                                       "(skipped without them; a failure under CI=true)")


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item):
    for marker, missing in NEEDS.items():
        if item.get_closest_marker(marker) is None:
            continue
        reason = missing()
        if reason is None:
            continue
        if in_ci():
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)


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


@pytest.fixture(scope="session")
def task_fixtures(tmp_path_factory) -> Path:
    """The hand-written zero-shot fixtures (tests/fixtures/tasks: five made-up examples per task) laid out like
    ../shared/data, HellaSwag bzip2-compressed under its standard name as in the real data."""
    import bz2

    d = tmp_path_factory.mktemp("task-fixtures")
    shutil.copytree(FIXTURES / "tasks", d, dirs_exist_ok=True)
    plain = d / "hellaswag" / "hellaswag_val_full.txt"
    with bz2.open(plain.with_suffix(".txt.bz2"), "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    plain.unlink()
    return d


E2E = REPO / "tests" / "e2e" / "config.yaml"
# How the tests schedule their workflow runs. A tiny-model job spends its time starting Python and importing torch
# and transformers (~7 s on one core, against well under a second of work), so the tests let two GPU-token jobs
# overlap on the two CI cores (--cores 4 books 2 threads for each): the tiny e2e run takes 105 s instead of 174 s.
# The default profile itself keeps one such job at a time (real models are compute-bound).
TEST_CORES = ("--cores", "4", "--resources=gpu=2")  # one argv item: targets may follow


def snakemake(workdir: Path, *args: str, config: Path | None = None, check: bool = True):
    """Run the real workflow through the snakemake CLI in `workdir` (default profile, TEST_CORES)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config or workdir / "config.yaml"),
           "--workflow-profile", str(REPO / "profiles" / "default"), *TEST_CORES, *args]
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


# The experiment grid (tests/test_grid.py): depth and width × PIP, ShortGPT block influence and random in one run.
# Session-scoped: tests/test_api.py runs the usage snippet on its width/pip variant.
GRID_VARIANTS = ["depth/pip/r0.2", "depth/block_influence/r0.2", "depth/random/r0.2", "width/pip/r0.2",
                 "width/random/r0.2"]  # block_influence is depth only: the grid skips width × block_influence
GRID_TARGETS = ("results/summary.tsv", "results/plots/removed_layers.png")


def grid_config() -> dict:
    import yaml

    cfg = yaml.safe_load(E2E.read_text())
    cfg["prune"].update(depth={"layers_per_round": 2}, width={"rounds": 2},
                        grid={"units": ["depth", "width"], "methods": ["pip", "block_influence", "random"]})
    cfg["eval"].update(seq_lens=[16], max_tokens=256, efficiency={"enabled": False})
    cfg["mlflow"] = {"enabled": False}
    return cfg


def dry_run(workdir: Path, config: Path, *targets: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    import re

    out = snakemake(workdir, "-n", *targets, config=config).stdout
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:\n)", out)[1:]:
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block).group(1)
        m = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        jobs.append((rule, dict(kv.split("=", 1) for kv in m.group(1).split(", ")) if m else {}))
    return jobs


@pytest.fixture(scope="session")
def grid_run(tmp_path_factory) -> tuple[Path, list]:
    """(work directory after a complete grid run, the job list of the dry run before it). Tests only read it and
    write their own alternative config files beside it (dry runs): none reruns a job in it."""
    import yaml

    workdir = tmp_path_factory.mktemp("grid")
    (workdir / "config.yaml").write_text(yaml.safe_dump(grid_config()))
    jobs = dry_run(workdir, workdir / "config.yaml", *GRID_TARGETS)
    snakemake(workdir, *GRID_TARGETS)
    return workdir, jobs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """The embedded calibration corpus (perturbation and guided-generator tests)."""
    from pipsteps.textdata import embedded_paragraphs

    return embedded_paragraphs("calibration")


@pytest.fixture(scope="module")
def lexicon(corpus):
    from pipsteps.perturb import build_lexicon

    return build_lexicon(corpus, min_freq=2)
