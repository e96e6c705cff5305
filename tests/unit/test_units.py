"""Depth and width behind one interface (pipsteps.units): plan, score, select and apply, exercised the same way for
both units on the tiny model, with the shared pieces (protection, per-round budgets, seeded random scores) checked
against direct computations."""

import pytest
import torch

from pipsteps import selection, units
from pipsteps.io import PipError, count_params
from pipsteps.plan import PlanConfig
from pipsteps.prune import PruneConfig
from pipsteps.selection import RoundInputs
from pipsteps.shape import shape_of
from pipsteps.surgery import load_pruned, read_manifest


def flat(unit: str, scores) -> list[tuple[float, tuple]]:
    """(score, structure id) of every unprotected structure: (layer,) at depth, (kind, layer, group) at width."""
    if unit == "depth":
        return [(s, (i,)) for i, s in enumerate(scores)]
    return [(s, (k, i, g)) for k in ("attn", "mlp") for i, row in enumerate(scores.values(k))
            for g, s in enumerate(row)]


def chosen(unit: str, removal) -> set[tuple]:
    if unit == "depth":
        return {(i,) for i in removal}
    return {(k, i, g) for k, d in zip(("attn", "mlp"), removal) for i, gs in d.items() for g in gs}


def plan_of(unit: str, model, method: str = "magnitude"):
    first, last = selection.protection(unit, model.config.num_hidden_layers, None, 1 if unit == "depth" else None)
    cfg = PlanConfig(unit=unit, method=method, target_ratio=0.2, rounds=2, layers_per_round=1, protect_first=first,
                     protect_last=last)
    return units.get(unit).plan(cfg, shape_of(model))


@pytest.mark.parametrize("unit", ["depth", "width"])
def test_plan_score_select_apply_removes_the_lowest_unprotected_structures(unit, tiny_dir):
    u, model = units.get(unit), load_pruned(tiny_dir)
    plan = plan_of(unit, model)
    assert plan["unit"] == unit and plan["rounds"] == 2
    protected = {*range(plan["protect_first"]), *range(6 - plan["protect_last"], 6)}
    assert protected == ({5} if unit == "depth" else {0})  # given at depth; the width default round(6/8) first
    budget = plan["per_round"][0] if unit == "depth" else plan["kv_groups_per_round"][0] + plan["channels_per_round"][0]
    cfg = PruneConfig(method="magnitude", round=1)
    scores = u.score(model, "magnitude", cfg, RoundInputs(), plan)
    removal = u.select(model, scores, plan, 1)
    got = chosen(unit, removal)
    assert len(got) == budget > 0 and not {s[-2] if unit == "width" else s[0] for s in got} & protected
    if unit == "depth":  # the lowest scores among the unprotected layers
        free = sorted((s, k) for s, k in flat(unit, scores) if k[0] not in protected)
        assert got == {k for _, k in free[:budget]}
    else:  # per type, lowest first: a kept group scoring below a removed one sits in a layer down to its last group
        for kind in ("attn", "mlp"):
            mine = [(s, k) for s, k in flat(unit, scores) if k[0] == kind and k[1] not in protected]
            worst_taken = max(s for s, k in mine if k in got)
            left = {i: sum(1 for _, k in mine if k[1] == i and k not in got) for _, (_, i, _) in mine}
            assert all(left[k[1]] == 1 for s, k in mine if k not in got and s < worst_taken)
            assert all(n >= 1 for n in left.values())
    before = count_params(model)["total"]
    manifest = read_manifest(tiny_dir)
    fields = u.apply(model, manifest, removal, scores, 1, "magnitude")
    after = count_params(model)["total"]
    assert after < before and manifest["rounds"][-1]["round"] == 1
    if unit == "depth":
        assert fields["layers_left"] == 6 - budget and sorted(manifest["removed_layers"]) == sorted(i for (i,) in got)
    else:
        assert sum(len(v) for v in fields["removed_groups"]["channels"].values()) == plan["channels_per_round"][0]
    # the model keeps running after the surgery
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7, 8]])).logits).all()


@pytest.mark.parametrize("unit", ["depth", "width"])
def test_random_scores_are_the_shared_seeded_draws(unit, tiny_dir):
    u, model = units.get(unit), load_pruned(tiny_dir)
    plan = plan_of(unit, model, "random")
    cfg = PruneConfig(method="random", round=2)
    a = u.score(model, "random", cfg, RoundInputs(seed=3), plan)
    b = u.score(model, "random", cfg, RoundInputs(seed=3), plan)
    c = u.score(model, "random", cfg, RoundInputs(seed=4), plan)
    assert flat(unit, a) == flat(unit, b) and flat(unit, a) != flat(unit, c)
    gen = torch.Generator().manual_seed(selection.round_seed(3, 2))
    rows = [a] if unit == "depth" else [row for i in range(6) for row in (a.values("attn")[i], a.values("mlp")[i])]
    for row in rows:  # one generator per round; width draws each layer's KV groups, then its channels
        assert row == torch.rand(len(row), generator=gen, dtype=torch.float64).tolist()
    assert u.select(model, a, plan, 2) == u.select(model, b, plan, 2)


def test_shared_budgets_and_protection():
    assert selection.split_even(10, 4) == [3, 3, 2, 2] and sum(selection.split_even(7, 7)) == 7
    assert selection.split_chunks(7, 3) == [3, 3, 1] and selection.split_chunks(6, 6) == [6]
    assert selection.protection("width", 32, None, None) == (4, 2)
    assert selection.protection("depth", 32, None, 3) == (0, 3)
    assert selection.candidates(6, 1, 2) == [1, 2, 3]
    # depth is the lowest-k case of one group per layer: ties go to the lower layer
    assert selection.lowest([[0.5], [0.1], [0.1], [0.0]], 2, [1, 2, 3], min_keep=0) == {1: [0], 3: [0]}


def test_unknown_unit_is_one_line():
    with pytest.raises(PipError, match="unknown unit 'heads'; allowed: depth, width"):
        units.get("heads")
