"""The aux-model perturbed views in the real workflow (tiny random Llama as target and aux model): the aux rule is
cached, keyed on the calibration and generator settings only, and a bad aux model fails before any gradient work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from conftest import E2E, snakemake
from pipsteps.llm_edit import DEFAULT_PROMPT

CALIB = "results/calibration/calibration.json"


def config(tmp: Path, name: str, **perturbation) -> Path:
    cfg = yaml.safe_load(E2E.read_text())
    cfg["perturbation"] = perturbation
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def edit_config(path: Path, name: str, section: str, **values) -> Path:
    cfg = yaml.safe_load(path.read_text())
    cfg[section].update(values)
    out = path.with_name(f"{name}.yaml")
    out.write_text(yaml.safe_dump(cfg))
    return out


def jobs(workdir: Path, cfg: Path, *targets: str) -> dict[str, int]:
    """Job name -> count of a dry run (the whole workflow unless targets are given)."""
    out = snakemake(workdir, "-n", *targets, config=cfg).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory) -> tuple[Path, Path]:
    """The calibration of the tiny workflow with llm_guided, the target model as its own aux model."""
    workdir = tmp_path_factory.mktemp("guided")
    cfg = config(workdir, "guided", generator="llm_guided", aux_model="tiny:llama")
    snakemake(workdir, CALIB, config=cfg)
    return workdir, cfg


def test_guided_view_is_built_by_the_cached_aux_rule(guided_run):
    workdir, _ = guided_run
    r = workdir / "results/calibration"
    assert not (workdir / "results/aux").exists()  # aux_model = model.source: the prepared model is reused
    aux = json.loads((r / "aux_edits.json").read_text())
    calib = json.loads((r / "calibration.json").read_text())
    assert calib["aux"]["generator"] == "llm_guided" and calib["aux"]["edits"] == calib["edits"] > 0
    assert aux["config"]["prompt"] == DEFAULT_PROMPT  # the multi-line prompt survives the shell quoting
    assert abs(calib["edit_rate"] - 0.2) < 0.05
    records = [json.loads(line) for line in (r / "texts.jsonl").read_text().splitlines()]
    assert len(records) == 4 and [str(x["window"]) for x in records] == list(aux["windows"])
    for x in records:
        assert len(x["edit_scores"]) == len(x["edits"]) > 0
        assert all(set(s) == {"fluency", "meaning", "by"} for s in x["edit_scores"])
    clean, pert = load_file(r / "clean.safetensors")["input_ids"], load_file(r / "perturbed.safetensors")["input_ids"]
    assert clean.shape == pert.shape == (4, 32) and (clean != pert).any(dim=1).all()
    log = (workdir / "logs/choose_aux_edits/aux_edits.log").read_text()
    assert "achieved edit rate" in log


def test_pruning_settings_never_rerun_the_aux_rule(guided_run):
    workdir, cfg = guided_run
    assert "choose_aux_edits" in jobs(workdir, edit_config(cfg, "drop", "perturbation", max_drop=1.0), CALIB)
    for name, section, values in [("ratio", "prune", {"target_ratio": 0.4}), ("unit", "prune", {"unit": "width"}),
                                  ("eval", "eval", {"max_tokens": 256})]:
        listed = jobs(workdir, edit_config(cfg, name, section, **values))
        assert "plan_rounds" in listed or "evaluate_ppl" in listed  # the rest of the workflow is to run
        assert "choose_aux_edits" not in listed and "prepare_calibration" not in listed, (name, listed)


def test_the_aux_rule_tracks_exactly_the_modules_its_step_imports(guided_run):
    """Editing a module the aux step imports reruns it; the calibration step that applies its edits is not among
    them, so editing that step reruns only prepare_calibration, never the aux model."""
    workdir, cfg = guided_run
    out = snakemake(workdir, "-n", "-f", "results/calibration/aux_edits.json", config=cfg).stdout
    code = {Path(f).name for f in re.search(r"^\s+input: (.+)$", out, re.M).group(1).split(", ")
            if f.endswith(".py")}
    assert {"aux_edits.py", "guided.py", "llm_edit.py", "perturb.py", "calib_text.py"} <= code
    assert "calibration.py" not in code and "prune.py" not in code


def test_another_aux_model_is_prepared_once_in_its_own_rule(guided_run):
    workdir, cfg = guided_run
    listed = jobs(workdir, edit_config(cfg, "smol", "perturbation", aux_model="embedded:smollm2"), CALIB)
    assert listed == {"prepare_aux_model": 1, "choose_aux_edits": 1, "prepare_calibration": 1}


def test_rule_based_ignores_the_aux_settings(e2e_run):
    """The complete tiny run (rule_based): changing the aux-model settings reruns nothing."""
    cfg = yaml.safe_load((e2e_run / "config.yaml").read_text())
    cfg.setdefault("perturbation", {}).update(aux_model="embedded:smollm2", max_drop=2.0, llm_prompt="{text}")
    changed = e2e_run / "aux-changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    assert jobs(e2e_run, changed) == {}


@pytest.mark.parametrize("perturbation,message", [
    ({"aux_model": "./no/such/aux"}, "perturbation.aux_model: model path does not exist: ./no/such/aux"),
    ({"aux_model": "embedded:other"}, "perturbation.aux_model: unknown embedded model 'embedded:other'"),
    ({"draws": 2}, "perturbation.draws must be 1 with perturbation.generator llm_guided"),
    ({"llm_prompt": "no placeholder"}, "perturbation.llm_prompt"),
])
def test_bad_aux_settings_fail_at_parse_time(tmp_path, perturbation, message):
    cfg = config(tmp_path, "bad", generator="llm_guided", **perturbation)
    proc = snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_unloadable_aux_model_is_a_one_line_job_error_before_gradients(tmp_path):
    (tmp_path / "empty_model").mkdir()
    cfg = config(tmp_path, "empty", generator="llm_guided", aux_model=str(tmp_path / "empty_model"))
    proc = snakemake(tmp_path, config=cfg, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/prepare_aux_model/aux.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and "could not load model" in errors[0], log[-2000:]
    assert not list((tmp_path / "results").rglob("grads_*"))
