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
