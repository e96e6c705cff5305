"""The pruning units behind one interface: depth (whole decoder layers, pipsteps.unit_depth) and width (KV groups
and MLP channels, pipsteps.unit_width). `plan` is pipsteps.unit_plans, which the plan step imports alone (editing a
score's code does not rerun a plan); every prune round calls `score`, `select` and
`apply` on the model it loaded. Shared pieces (protected layers, per-round budgets, seeded random scores,
lowest-score selection) are in pipsteps.selection."""

from __future__ import annotations

from typing import Any, Protocol

from pipsteps.errors import PipError
from pipsteps.selection import RoundInputs
from pipsteps.shape import ModelShape
from pipsteps.unit_depth import DepthUnit
from pipsteps.unit_width import WidthUnit


class Unit(Protocol):
    name: str

    def plan(self, cfg: Any, shape: ModelShape) -> dict[str, Any]:
        """The plan JSON: how much goes in each round (`cfg`: a pipsteps.plan.PlanConfig with the protection
        resolved; `shape`: the dense model's, pipsteps.shape)."""

    def score(self, model, name: str, cfg: Any, inputs: RoundInputs, plan: dict[str, Any]) -> Any:
        """Scores of the current model's structures under score `name` (lowest = pruned first)."""

    def select(self, model, scores: Any, plan: dict[str, Any], round_: int) -> Any:
        """What the round removes: its planned budget, lowest scores first, unprotected layers only."""

    def apply(self, model, manifest: dict, removal: Any, scores: Any, round_: int, label: str) -> dict[str, Any]:
        """Remove in place, update the manifest; returns the round record's fields."""


UNITS: dict[str, Unit] = {"depth": DepthUnit(), "width": WidthUnit()}


def get(name: str) -> Unit:
    if name not in UNITS:
        raise PipError(f"unknown unit {name!r}; allowed: {', '.join(UNITS)}")
    return UNITS[name]
