"""The results layout (pipsteps.layout): one spelling of every path, the same as the rules' output patterns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipsteps import layout as L

REPO = Path(__file__).resolve().parents[2]
VAR = L.variant("{unit}", "{method}", "{ratio}")  # the rules' wildcard pattern of a variant


def test_variant_names():
    assert L.variant("width", "pip", 0.2) == "width/pip/r0.2"
    assert L.variant("depth", "random_s1", 0.30) == "depth/random_s1/r0.3"
    assert L.variant("depth", "sleb", "0.20") == "depth/sleb/r0.20"  # a wildcard's value stays as it is
    assert L.recovered("width/pip/r0.2") == "width/pip/r0.2/recovered"
    assert L.is_recovered("width/pip/r0.2/recovered") and not L.is_recovered("width/pip/r0.2")
    assert L.variant_of("width/pip/r0.2/recovered") == L.variant_of("width/pip/r0.2") == "width/pip/r0.2"
    assert L.model(L.DENSE) == "base/model" and L.model("width/pip/r0.2/recovered") == "width/pip/r0.2/recovered/model"
    assert L.evaluation("base", "tasks") == "base/eval/tasks.json"


@pytest.mark.parametrize("rule_file,path", [
    ("prune.smk", L.round_model(VAR, "{round}")),
    ("prune.smk", L.round_record(VAR, "{round}")),
    ("prune.smk", L.model(VAR)),
    ("model.smk", L.plan(VAR)),
    ("model.smk", L.model(L.DENSE)),
    ("gradients.smk", L.dense_grads("{view}")),
    ("gradients.smk", L.dense_grads("{view}", "json")),
    ("evaluate.smk", L.evaluation("{stage}")),
    ("zeroshot.smk", L.evaluation("{stage}", "tasks")),
    ("recovery.smk", L.model(L.recovered(VAR))),
])
def test_rule_outputs_follow_the_layout(rule_file, path):
    assert f'"{L.RESULTS}/{path}"' in (REPO / "workflow/rules" / rule_file).read_text()


def test_rounds_reads_the_plan_and_every_round(tmp_path):
    var = L.variant("depth", "pip", 0.2)
    (tmp_path / var).mkdir(parents=True)
    (tmp_path / L.plan(var)).write_text(json.dumps({"rounds": 2}))
    for r in (1, 2):
        (tmp_path / L.round_dir(var, r)).mkdir()
        (tmp_path / L.round_record(var, r)).write_text(json.dumps({"round": r}))
    assert [rd["round"] for rd in L.rounds(tmp_path, var)] == [1, 2]
    (tmp_path / L.round_record(var, 2)).unlink()
    with pytest.raises(FileNotFoundError, match="round_2/round.json"):
        L.rounds(tmp_path, var)
