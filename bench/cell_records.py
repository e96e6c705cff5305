"""What a protocol result JSON records of a cell's workflow outputs (bench/compare.py): perplexities, zero-shot
averages, the calibration of each perturbed view, the run's provenance; and the atomic JSON writer."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from protocol import REPO

PACKAGES = ("torch", "transformers", "snakemake", "lm_eval", "peft", "datasets", "safetensors")
CALIB_KEYS = ("calibration_hash", "edit_rate", "target_rate")
VIEW_IDENTITY = ("calibration_hash", "edit_rate")  # same values: the same perturbed view
AUX_KEYS = ("generator", "llm_proposed", "llm_accepted", "acceptance_rate", "fallback_edits", "generation_s")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def zero_shot(tasks: Path) -> dict | None:
    """Average, average without BoolQ (its capped slice mostly measures a yes/no bias) and per-task headline
    accuracies of one tasks.json, by the workflow's own averaging rule."""
    if not tasks.exists():
        return None
    from pipsteps.zeroshot import average

    data = read_json(tasks)
    rest = {t: r for t, r in data["tasks"].items() if t != "boolq"}
    return {"avg": data["average"]["value"], "avg_wo_boolq": average(rest)["value"],
            "tasks": {t: r["headline"] for t, r in data["tasks"].items()}}


def ppl(metrics: Path) -> dict[str, float]:
    return {name: next(iter(by_len.values())) for name, by_len in read_json(metrics)["ppl"].items()}


def calibration_record(calib: dict[str, Any]) -> dict[str, Any]:
    """What a result keeps of one view's calibration.json: the hash of its token ids (clean and perturbed), its edit
    rate and, for the aux-model views, the generator and (llm) how many of the instruction model's edits passed."""
    aux = calib.get("aux") or {}
    return {**{k: calib.get(k) for k in CALIB_KEYS}, **{k: aux[k] for k in AUX_KEYS if k in aux}}


def provenance() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "packages": versions, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count()}


def write_result(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
