import pytest

from pipsteps.io import PipError
from pipsteps.plan import PlanConfig
from pipsteps.unit_plans import depth_plan


def test_smollm2_shape_needs_eight_layers():
    # SmolLM2-135M: 30 layers of 3,540,096 params, 134,515,008 in total (tied embeddings counted once)
    plan = depth_plan(PlanConfig(target_ratio=0.2), 30, 134_515_008, 3_540_096)
    assert plan["layers_to_remove"] == 8 and plan["rounds"] == 8
    assert 0.2 <= plan["expected_ratio"] < 0.2 + 3_540_096 / 134_515_008


def test_rounds_follow_layers_per_round_and_oneshot():
    plan = depth_plan(PlanConfig(target_ratio=0.2, layers_per_round=3), 30, 134_515_008, 3_540_096)
    assert plan["per_round"] == [3, 3, 2]
    plan = depth_plan(PlanConfig(target_ratio=0.2, oneshot=True), 30, 134_515_008, 3_540_096)
    assert plan["per_round"] == [8]


def test_exact_multiple_does_not_overshoot():
    plan = depth_plan(PlanConfig(target_ratio=0.25), 4, 400, 100)
    assert plan["layers_to_remove"] == 1


def test_unreachable_ratio_fails_clearly():
    with pytest.raises(PipError, match="unreachable.*protect_first=3"):
        depth_plan(PlanConfig(target_ratio=0.5, protect_first=3, protect_last=2), 6, 600, 100)
