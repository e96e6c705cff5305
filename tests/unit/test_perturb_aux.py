"""The aux-model step (pipsteps.aux_edits) and the calibration step applying its edits, on a tiny random model."""

import json
from dataclasses import fields

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipsteps.aux_edits import AuxConfig
from pipsteps.aux_edits import run as choose
from pipsteps.calibration import CalibConfig
from pipsteps.calibration import run as calibrate
from pipsteps.io import PipError
from pipsteps.llm_edit import DEFAULT_PROMPT

SMALL = dict(n_samples=4, seq_len=32, seed=3)
ONE = dict(threads=1)  # the aux step sets its threads itself


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads (and spins on a busy machine)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def guided(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("guided")
    metrics = choose(AuxConfig(generator="llm_guided", **ONE, **SMALL), tiny_dir, tiny_dir, out / "aux_edits.json")
    return out, metrics


def test_calibration_applies_the_aux_edits_with_their_scores(tiny_dir, guided, tmp_path):
    out, aux = guided
    m = calibrate(CalibConfig(generator="llm_guided", **SMALL), tiny_dir, tmp_path, out / "aux_edits.json")
    assert m["aux"] == aux and m["edits"] == aux["edits"] and m["eligible"] == aux["eligible"]
    assert abs(m["edit_rate"] - 0.2) < 0.05 and aux["candidates_scored"] > aux["edits"]
    records = [json.loads(line) for line in (tmp_path / "texts.jsonl").read_text().splitlines()]
    data = json.loads((out / "aux_edits.json").read_text())
    assert [str(r["window"]) for r in records] == list(data["windows"])
    for r in records:
        entry = data["windows"][str(r["window"])]
        assert r["edits"] == [[e["old"], e["new"]] for e in entry["edits"]]
        assert r["edit_scores"] == entry["record"]["edit_scores"] and all(s["by"] == "guided" for s in r["edit_scores"])
    # the same clean windows (and control view) as the rule-based generator: only the perturbed view differs
    rule = calibrate(CalibConfig(**SMALL), tiny_dir, tmp_path / "rule")
    for view in ("clean", "control"):
        assert torch.equal(load_file(tmp_path / f"{view}.safetensors")["input_ids"],
                           load_file(tmp_path / "rule" / f"{view}.safetensors")["input_ids"])
    assert rule["calibration_hash"] != m["calibration_hash"]


def test_edits_file_must_match_the_calibration(tiny_dir, guided, tmp_path):
    out, _ = guided
    with pytest.raises(PipError, match="made for other calibration settings .*seed"):
        calibrate(CalibConfig(generator="llm_guided", **{**SMALL, "seed": 4}), tiny_dir, tmp_path, out / "aux_edits.json")
    with pytest.raises(PipError, match="needs aux-model edits file"):
        calibrate(CalibConfig(generator="llm_guided", **SMALL), tiny_dir, tmp_path)
    with pytest.raises(PipError, match="takes no aux-model edits file"):
        calibrate(CalibConfig(**SMALL), tiny_dir, tmp_path, out / "aux_edits.json")
    assert not (tmp_path / "clean.safetensors").exists()


def test_aux_step_errors_are_one_line(tiny_dir, tmp_path):
    with pytest.raises(PipError, match="deterministic: it needs perturbation.draws 1"):
        choose(AuxConfig(generator="llm_guided", draws=2, **ONE, **SMALL), tiny_dir, tiny_dir, tmp_path / "e.json")
    with pytest.raises(PipError, match="needs an instruction-tuned aux model with a chat template"):
        choose(AuxConfig(generator="llm", **ONE, **SMALL), tiny_dir, tiny_dir, tmp_path / "e.json")  # tiny: no template
    with pytest.raises(PipError, match=r"could not load the aux model 'x' from .*nowhere"):
        choose(AuxConfig(aux_model="x", **ONE, **SMALL), tiny_dir, tmp_path / "nowhere", tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()


def test_schema_defaults_are_the_step_defaults(repo):
    schema = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())
    props = schema["properties"]["perturbation"]["properties"]
    names = {"llm_prompt": "prompt"}
    defaults = {f.name: f.default for f in fields(AuxConfig)}
    for key in ("aux_model", "max_drop", "max_candidates", "right_context", "llm_prompt"):
        assert props[key]["default"] == defaults[names.get(key, key)], key
    assert props["llm_prompt"]["default"] == DEFAULT_PROMPT
    assert set(props["generator"]["enum"]) == {"rule_based", "token_noise", "llm_guided", "llm"}
