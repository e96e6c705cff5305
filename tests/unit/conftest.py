"""Fixtures shared by the perturbation tests: the embedded calibration corpus and its lexicon."""

from __future__ import annotations

import pytest

from pipsteps.perturb import build_lexicon
from pipsteps.textdata import embedded_paragraphs


@pytest.fixture(scope="module")
def corpus():
    return embedded_paragraphs("calibration")


@pytest.fixture(scope="module")
def lexicon(corpus):
    return build_lexicon(corpus, min_freq=2)
