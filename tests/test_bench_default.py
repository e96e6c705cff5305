"""bench/run_default.py's start-up decomposition: the per-job start-up is measured by loading a real model in fresh
processes, counted only for the rules that load a model, and subtracted from the summed rule times; a
failed measurement is an error entry, not a lost run."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run_default  # noqa: E402


def test_startup_counts_model_jobs_only(tmp_path: Path, tiny_dir: Path) -> None:
    (tmp_path / "results/base").mkdir(parents=True)
    (tmp_path / "results/base/model").symlink_to(tiny_dir)
    rules = {"prune_round": {"jobs": 3, "wall_s": 30.0}, "evaluate_ppl": {"jobs": 1, "wall_s": 10.0},
             "summarize": {"jobs": 1, "wall_s": 0.5}, "final_model": {"jobs": 3, "wall_s": 0.1}}
    s = run_default.startup(tmp_path, rules, repeats=1)
    assert 0 < s["per_job_s"] < 60
    assert s["model_jobs"] == 4  # summarize and final_model load no model
    assert s["rules_sum_s"] == 40.6
    assert s["share_s"] == round(s["per_job_s"] * 4, 1)
    assert s["rest_s"] == round(40.6 - s["per_job_s"] * 4, 1)


def test_startup_without_the_dense_model_is_an_error_entry(tmp_path: Path) -> None:
    s = run_default.startup(tmp_path, {"prune_round": {"jobs": 1, "wall_s": 1.0}}, repeats=1)
    assert list(s) == ["error"] and "PipError" in s["error"] and "results/base/model" in s["error"]
