"""tests/conftest.py's rule for tests that need something outside the repository, run in a child pytest: without the
real data or SLURM such a test skips with the reason, under CI=true it fails; with the data it runs under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

REAL_DATA_TEST = "tests/test_eval_data.py::test_local_files_give_the_hf_rows"
SLURM_TEST = "tests/test_slurm.py::test_slurm_run_is_complete_for_a_second_run"


def child_pytest(test: str, **env: str | None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "PIPSTEPS_SHARED_DATA")}
    environ.update({k: v for k, v in env.items() if v is not None})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test],
                          capture_output=True, text=True, cwd=REPO, env=environ, timeout=600)


@pytest.mark.parametrize("ci", [None, "true"])
def test_missing_data_skips_outside_ci_and_fails_in_ci(tmp_path, ci):
    proc = child_pytest(REAL_DATA_TEST, CI=ci, PIPSTEPS_SHARED_DATA=str(tmp_path / "no-data"))
    out = proc.stdout + proc.stderr
    reason = f"needs the real evaluation data in {tmp_path / 'no-data'} (not found"
    if ci:
        assert proc.returncode == 1 and "1 error" in out and f"CI=true: {reason}" in out, out[-3000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in out and reason in out, out[-3000:]


@pytest.mark.parametrize("ci", [None, "true"])
def test_missing_slurm_skips_outside_ci_and_fails_in_ci(ci):
    """A PATH holding only the Python interpreter: no SLURM binary is found. The check runs before any fixture, so
    no cluster is started."""
    proc = child_pytest(SLURM_TEST, CI=ci, PATH=str(Path(sys.executable).parent))
    out = proc.stdout + proc.stderr
    if ci:
        assert proc.returncode == 1 and "1 error" in out and "CI=true: needs SLURM (munged" in out, out[-3000:]
    else:
        assert proc.returncode == 0 and "1 skipped" in out and "tests/slurm/install_slurm.sh" in out, out[-3000:]


@pytest.mark.shared_data
def test_real_data_tests_run_under_ci():
    proc = child_pytest(REAL_DATA_TEST, CI="true")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "1 passed" in out and "skipped" not in out, out[-3000:]
