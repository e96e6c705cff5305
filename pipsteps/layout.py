"""The results layout: where every step's outputs live, relative to the results directory (pure Python, no I/O
except `rounds`). The workflow's rules, the summary, the plots, the tracking import and the bench scripts all
build their paths here, so the layout is spelled out once.

    base/model/, base/model.json                 the prepared dense model
    base/grads_VIEW.safetensors / .json          the dense model's gradients per view (round 1 of every variant)
    base/block_influence.json                    the dense model's block influence
    calibration/VIEW.safetensors, calibration.json
    UNIT/METHOD/rRATIO/                          a variant (its stage name)
        plan.json, round_R/round.json            the plan and one record per round
        round_R/model/                           the model after round R (temporary by default)
        model/                                   the variant's pruned model (the last round's)
        recovered/                               LoRA recovery: the stage UNIT/METHOD/rRATIO/recovered
    STAGE/eval/{metrics,tasks,efficiency}.json   the evaluations of a stage (base, a variant, a recovered variant)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

RESULTS = "results"  # the workflow's results directory, relative to its working directory
DENSE = "base"  # the dense model's stage
RECOVERED = "recovered"  # the last part of a recovered stage


def fmt_ratio(ratio: float | str) -> str:
    return format(float(ratio), "g")


def variant(unit: str, method: str, ratio: float | str) -> str:
    """The stage name UNIT/METHOD/rRATIO of a variant: a float ratio in its shortest form (0.2), a string (a
    wildcard's value) as it is."""
    return f"{unit}/{method}/r{ratio if isinstance(ratio, str) else fmt_ratio(ratio)}"


def recovered(stage: str) -> str:
    return f"{stage}/{RECOVERED}"


def is_recovered(stage: str) -> bool:
    return stage.endswith(f"/{RECOVERED}")


def variant_of(stage: str) -> str:
    """The variant a stage belongs to (a recovered stage: the variant it recovers)."""
    return stage.removesuffix(f"/{RECOVERED}")


def model(stage: str) -> str:
    """The model a stage evaluates: the dense model, a variant's final model or its recovered model."""
    return f"{stage}/model"


def plan(var: str) -> str:
    return f"{var}/plan.json"


def round_dir(var: str, r: int | str) -> str:
    return f"{var}/round_{r}"


def round_record(var: str, r: int | str) -> str:
    return f"{round_dir(var, r)}/round.json"


def round_model(var: str, r: int | str) -> str:
    return f"{round_dir(var, r)}/model"


def dense_grads(view: str, ext: str = "safetensors") -> str:
    return f"{DENSE}/grads_{view}.{ext}"


def calib_view(view: str) -> str:
    return f"calibration/{view}.safetensors"


def evaluation(stage: str, name: str = "metrics") -> str:
    """STAGE/eval/NAME.json: metrics (perplexity), tasks (zero-shot) or efficiency."""
    return f"{stage}/eval/{name}.json"


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def rounds(results: str | Path, var: str, read: Callable[[Path], Any] = _read) -> list[dict[str, Any]]:
    """The round records of a variant, in order (the number of rounds from its plan); `read` reads one JSON file
    (pipsteps.files.read_json: a one-line error on a broken file)."""
    results = Path(results)
    n = read(results / plan(var))["rounds"]
    return [read(results / round_record(var, r)) for r in range(1, n + 1)]
