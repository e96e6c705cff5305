"""Plain `snakemake` uses profiles/default: Snakemake looks for the default workflow profile in profiles/default
beside the working directory or the Snakefile, so the profiles live at the top level of the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import E2E, REPO

PROFILE_LINE = "Using workflow specific profile profiles/default for setting default command line arguments."


def bare_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake ARGS` with no -s, --cores, --configfile or --workflow-profile, as a user types it."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], capture_output=True, text=True, cwd=workdir,
                          timeout=600)


def test_profiles_are_where_snakemake_looks():
    assert sorted(p.name for p in (REPO / "profiles").iterdir()) == ["default", "slurm"]
    assert not (REPO / "workflow" / "profiles").exists()
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert default["cores"] == "all" and default["rerun-incomplete"] is True
    assert yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["executor"] == "slurm"


def test_bare_dry_run_in_the_repository_uses_the_default_profile():
    proc = bare_snakemake(REPO, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert PROFILE_LINE in out.splitlines(), out[:2000]


def test_bare_run_takes_cores_and_resources_from_the_profile(tmp_path):
    """A directory laid out like the repository (tiny config): the bare command runs with the profile's cores and
    GPU token, while the same command with the profile switched off refuses to run without --cores."""
    for name in ("Snakefile", "workflow", "profiles", "pipsteps", "envs"):
        (tmp_path / name).symlink_to(REPO / name)
    shutil.copy(E2E, tmp_path / "config.yaml")
    off = bare_snakemake(tmp_path, "--workflow-profile", "none", "results/base/model.json")
    assert off.returncode != 0 and "cores have to be specified" in off.stderr, off.stderr[-2000:]
    assert not (tmp_path / "results").exists()
    on = bare_snakemake(tmp_path, "results/base/model.json")
    assert on.returncode == 0, on.stderr[-3000:]
    log = on.stdout + on.stderr
    assert PROFILE_LINE in log.splitlines()
    assert "Provided cores: " in log and re.search(r"^Provided resources: gpu=.*\b1\b", log, re.M), log[-3000:]
    assert (tmp_path / "results/base/model.json").exists()
