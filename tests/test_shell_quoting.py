"""Config strings reach the steps' shell commands quoted, and a step's code inputs are every module it imports.

The workflow code, the working directory and every local input live under names with a single quote and a `;`
(and config strings carry `'; touch PWNED`): a dry run prints commands that parse back to exactly the configured
values with no extra shell operator, a real tiny run through prepare_model, calibration, gradients, a prune round
and an evaluation works, and nothing is ever executed from a value. In that finished run, editing
pipsteps/scores.py or pipsteps/width_scores.py (imported by the prune step, not named by its rule) reruns the
prune round in a dry run, with the edited file as the reason, while editing a module that no step of the targets
imports reruns nothing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import E2E, REPO, TEST_CORES
from pipsteps.textdata import read_rows

EVIL = "'; touch PWNED; '"
TARGETS = ("results/depth/pip/r0.2/round_1/round.json", "results/base/eval/metrics.json")


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory) -> dict:
    """A copy of the workflow code and local inputs under hostile names, and the config that uses them."""
    base = tmp_path_factory.mktemp("quoting")
    code = base / "co'de; touch PWNED"
    code.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, code / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(REPO / name, code / name)
    (code / "pipsteps").mkdir()
    for f in (REPO / "pipsteps").glob("*.py"):
        shutil.copy(f, code / "pipsteps" / f.name)
    model = base / "mo'del; touch PWNED"
    shutil.copytree(tiny_dir, model)
    calib = base / "cal'ib; touch PWNED.txt"
    calib.write_text("\n".join(read_rows("embedded:calibration")) + "\n")
    heldout = base / "held'out; touch PWNED.txt"
    heldout.write_text("\n".join(read_rows("embedded:heldout")) + "\n")
    recovery = base / "reco'very; touch PWNED.jsonl"
    recovery.write_text("".join(json.dumps({"instruction": "say", "input": "", "output": "hi"}) + "\n"
                                for _ in range(8)))
    cfg = yaml.safe_load(E2E.read_text())
    cfg["model"]["source"] = str(model)
    cfg["calibration"]["source"] = str(calib)
    cfg["eval"]["datasets"] = [{"name": "heldout", "source": str(heldout)}]
    cfg["prune"]["baselines"] = ["random", "sleb"]
    cfg["recovery"] = {"enabled": True, "source": str(recovery), "dataset_config": f"cfg{EVIL}",
                       "split": f"train{EVIL}", "text_field": f"text{EVIL}", "batch_size": 4, "micro_batch": 2,
                       "max_steps": 1}
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{base}/ml'flow; touch PWNED.db"}
    return {"base": base, "code": code, "cfg": cfg}


def run_snakemake(setup: dict, workdir: Path, cfg: dict, *args: str, check: bool = True):
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(setup["code"] / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"),
           "--workflow-profile", str(setup["code"] / "profiles" / "default"), *TEST_CORES, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def commands(out: str) -> dict[str, list[list[str]]]:
    """Step module -> the argument lists of its printed commands; asserts that each command is one plain
    command with the log redirection as its only shell operator."""
    found: dict[str, list[list[str]]] = {}
    for line in out.splitlines():
        if not line.startswith("Shell command: python -m pipsteps."):
            continue
        cmd = line.removeprefix("Shell command: ")
        lexer = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        tokens = list(lexer)
        operators = [t for t in tokens if t and set(t) <= set(";&|<>()")]
        assert operators == [">", ">&"], (operators, cmd)  # `> {log} 2>&1` and nothing else
        args = shlex.split(cmd.rsplit(" > ", 1)[0])
        found.setdefault(args[2].removeprefix("pipsteps."), []).append(args)
    return found


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def no_injection(setup: dict) -> None:
    assert not list(setup["base"].rglob("PWNED")), "a config value was executed by the shell"


def test_dry_run_quotes_every_config_string(setup):
    cfg = {**setup["cfg"], "model": {**setup["cfg"]["model"], "revision": f"main{EVIL}"}}
    out = run_snakemake(setup, setup["base"] / "dry's; run", cfg, "-n", "-p")
    cmds = commands(out)
    assert {"prepare_model", "calibration", "gradients", "prune", "evaluate", "efficiency", "recover",
            "tracking"} <= set(cmds)
    prep = cmds["prepare_model"][0]
    assert flag(prep, "--source") == cfg["model"]["source"] and flag(prep, "--revision") == f"main{EVIL}"
    assert flag(cmds["calibration"][0], "--source") == cfg["calibration"]["source"]
    for args in cmds["evaluate"]:
        assert json.loads(flag(args, "--datasets"))[0]["source"] == cfg["eval"]["datasets"][0]["source"]
    for args in cmds["recover"]:
        for key in ("source", "dataset_config", "split", "text_field"):
            assert flag(args, "--" + key.replace("_", "-")) == cfg["recovery"][key], key
        assert args[args.index("--target-modules") + 1:args.index("--lr")] == [
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert flag(cmds["tracking"][0], "--tracking-uri") == cfg["mlflow"]["tracking_uri"]
    # one helper renders the compute settings of every GPU step; the forward-only prune score (sleb) gets the
    # device and require_gpu, the gradient-based one none
    for step in ("gradients", "evaluate", "efficiency", "recover"):
        for args in cmds[step]:
            assert [flag(args, f) for f in ("--device", "--dtype", "--device-map", "--require-gpu")] == [
                "auto", "auto", "None", "False"], step
    prune = {flag(a, "--method"): a for a in cmds["prune"]}
    assert flag(prune["sleb"], "--require-gpu") == "False" and flag(prune["sleb"], "--device") == "auto"
    assert "--require-gpu" not in prune["pip"] and "--device" not in prune["pip"]
    no_injection(setup)


@pytest.fixture(scope="module")
def finished(setup) -> Path:
    """The prune round and dense evaluation really run under the hostile names."""
    workdir = setup["base"] / "run's; dir"
    run_snakemake(setup, workdir, setup["cfg"], *TARGETS)
    return workdir


def test_quoted_paths_run_for_real(setup, finished):
    r = finished / "results"
    assert json.loads((r / "base/model.json").read_text())["source"] == setup["cfg"]["model"]["source"]
    assert json.loads((r / "calibration/calibration.json").read_text())["config"]["source"] == \
        setup["cfg"]["calibration"]["source"]
    ev = json.loads((r / "base/eval/metrics.json").read_text())
    assert ev["tokens"]["heldout"] == 512 and all(v > 1 for v in ev["ppl"]["heldout"].values())
    assert len(json.loads((r / "depth/pip/r0.2/round_1/round.json").read_text())["removed"]) == 1
    no_injection(setup)


def dry_jobs(setup: dict, workdir: Path) -> dict[str, str]:
    """(rule, wildcards) -> reason of every job a dry run of TARGETS would run."""
    out = run_snakemake(setup, workdir, setup["cfg"], "-n", *TARGETS)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) )", out)[1:]:
        rule = block.split(":", 1)[0].split()[-1]
        wildcards = re.search(r"^\s*wildcards: (.*)$", block, re.M)
        reason = re.search(r"^\s*reason: (.*)$", block, re.M)
        jobs[f"{rule}[{wildcards.group(1) if wildcards else ''}]"] = reason.group(1) if reason else ""
    return jobs


def edit(path: Path, ahead_s: float) -> None:
    """Change the file (Snakemake ignores a newer input whose checksum it recorded unchanged) and date it ahead."""
    with path.open("a") as f:
        f.write("# edited\n")
    t = time.time() + ahead_s
    os.utime(path, (t, t))


def test_editing_an_imported_module_reruns_the_prune_rounds(setup, finished):
    pkg = setup["code"] / "pipsteps"
    assert dry_jobs(setup, finished) == {}
    edit(pkg / "plots.py", 5)  # not imported by any step that TARGETS need
    assert dry_jobs(setup, finished) == {}
    round_1 = "prune_round[unit=depth, method=pip, ratio=0.2, round=1]"
    for module, ahead in (("scores.py", 10), ("width_scores.py", 20)):
        edit(pkg / module, ahead)
        jobs = dry_jobs(setup, finished)
        assert set(jobs) == {round_1}, jobs  # the evaluation and the gradients do not import the scores
        assert jobs[round_1].startswith("Updated input files:") and f"{pkg}/{module}" in jobs[round_1], jobs
