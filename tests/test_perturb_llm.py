"""The llm generator end to end with the embedded instruct model (SmolLM2-135M-Instruct) on two short windows: its
rewrites are validated, the rest is filled in by the guided generator, and nothing invalid reaches the perturbed
view. Slow (the model is prepared once per session; generation about half a minute on 2 cores)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from pipsteps.aux_edits import AuxConfig
from pipsteps.aux_edits import run as choose
from pipsteps.calibration import CalibConfig, load_text
from pipsteps.calibration import run as calibrate
from pipsteps.llm_edit import validate
from pipsteps.perturb import Edit, apply_edits, eligible_words, one_edit_variants

pytestmark = pytest.mark.slow


def test_llm_mode_with_the_embedded_instruct_model(smol, tmp_path):
    d, _ = smol
    cfg = AuxConfig(generator="llm", n_samples=2, seq_len=32, seed=0)
    m = choose(cfg, d / "model", d / "model", tmp_path / "aux_edits.json")
    assert m["llm_proposed"] == m["llm_accepted"] + sum(m["rejected_by_reason"].values())
    assert 0 <= m["acceptance_rate"] <= 1 and m["llm_kept"] <= m["llm_accepted"]
    assert m["llm_kept"] + m["fallback_edits"] == m["edits"] > 0
    print(f"\nllm acceptance: {m['llm_accepted']}/{m['llm_proposed']} proposed edits valid, {m['llm_kept']} kept, "
          f"{m['fallback_edits']} filled in by the guided generator; rejected {m['rejected_by_reason']}")
    _, lexicon = load_text(cfg)
    data = json.loads((tmp_path / "aux_edits.json").read_text())
    ccfg = CalibConfig(generator="llm", n_samples=2, seq_len=32, seed=0)
    calib = calibrate(ccfg, d / "model", tmp_path, tmp_path / "aux_edits.json")
    assert calib["aux"]["acceptance_rate"] == m["acceptance_rate"] and calib["edits"] == m["edits"]
    records = [json.loads(line) for line in (tmp_path / "texts.jsonl").read_text().splitlines()]
    assert [str(r["window"]) for r in records] == list(data["windows"])
    for r in records:
        entry = data["windows"][str(r["window"])]
        edits = [Edit(e["start"], e["old"], e["new"]) for e in entry["edits"]]
        assert r["perturbed"] == apply_edits(r["clean"], edits)  # the perturbed view holds these edits only
        editable = {w.start() for w in eligible_words(r["clean"])}
        for e, s in zip(edits, r["edit_scores"]):
            assert e.start in editable and e.new.lower() in lexicon
            assert e.new.lower() in one_edit_variants(e.old.lower())
            assert s["by"] in ("llm", "guided")
        valid, _ = validate(r["clean"][:r["llm_input_chars"]], r["llm_output"], lexicon)
        llm_edits = [e for e, s in zip(edits, r["edit_scores"]) if s["by"] == "llm"]
        assert all(e in valid for e in llm_edits)  # only validated changes of the model were kept
    clean, pert = load_file(tmp_path / "clean.safetensors")["input_ids"], load_file(tmp_path / "perturbed.safetensors")
    assert (clean != pert["input_ids"]).any(dim=1).all()
