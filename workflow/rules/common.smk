# Config validation, wildcard constraints and every helper function. No rules here.
import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pipsteps.config import ConfigError, check_config

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
try:
    check_config(config, SCHEMA)  # one-line error naming the key, before any job runs
except ConfigError as e:
    raise WorkflowError(str(e))
validate(config, SCHEMA)  # fills in the schema defaults


wildcard_constraints:
    unit="depth",
    method="[a-z_]+",
    ratio=r"0\.\d+",
    round=r"\d+",
    view="clean|perturbed",
    where=r"base|depth/[a-z_]+/r0\.\d+/round_\d+",
    stage=r"base|depth/[a-z_]+/r0\.\d+",


GRAD_METHODS = {"pip": ("clean", "perturbed"), "taylor": ("clean",), "magnitude": (), "random": ()}


def _is_local(source):
    return os.path.isabs(source) or source.startswith((".", "~"))


def _check_paths():
    """Fail at parse time on local inputs that do not exist (cheap checks before any heavy work)."""
    problems = []
    if (
        _is_local(config["model"]["source"])
        and not Path(config["model"]["source"]).expanduser().is_dir()
    ):
        problems.append(f"model.source: model path does not exist: {config['model']['source']}")
    for key, src in [("calibration.source", config["calibration"]["source"])] + [
        (f"eval.datasets.{d['name']}", d["source"]) for d in config["eval"]["datasets"]
    ]:
        if (_is_local(src) or src.endswith((".txt", ".jsonl"))) and not Path(
            src
        ).expanduser().is_file():
            problems.append(f"{key}: file not found: {src}")
    if problems:
        raise WorkflowError("; ".join(problems))


_check_paths()


def step_code(name):
    """The step's module as an input, so that editing it reruns the step."""
    return f"{workflow.basedir}/pipsteps/{name}.py"


def fmt_ratio(r):
    return format(float(r), "g")


def variants():
    """Stage names unit/method/rRATIO of every pruned variant: the main method first, then the baselines."""
    p = config["prune"]
    methods = list(dict.fromkeys([p["method"], *p["baselines"]]))
    return [f"{p['unit']}/{m}/r{fmt_ratio(p['target_ratio'])}" for m in methods]


def n_rounds(stage):
    """Rounds of a variant unit/method/rRATIO, from its plan (a checkpoint: known once the dense model exists)."""
    unit, method, r = stage.split("/")
    plan = checkpoints.plan_rounds.get(unit=unit, method=method, ratio=r[1:])
    return json.loads(Path(plan.output.plan).read_text())["rounds"]


def variant_dir(wildcards):
    return f"results/{wildcards.unit}/{wildcards.method}/r{wildcards.ratio}"


def previous_model(wildcards):
    """Round r prunes the model of round r-1; round 1 prunes the dense model (recursive chain of rounds)."""
    r = int(wildcards.round)
    return "results/base/model" if r == 1 else f"{variant_dir(wildcards)}/round_{r - 1}/model"


def grads_dir(wildcards):
    """Round 1 gradients are the dense model's: computed once and shared by every gradient-based variant."""
    r = int(wildcards.round)
    return "results/base" if r == 1 else f"{variant_dir(wildcards)}/round_{r}"


def round_grads(wildcards):
    return {
        view: f"{grads_dir(wildcards)}/grads_{view}.safetensors"
        for view in GRAD_METHODS[wildcards.method]
    }


def grads_flags(wildcards, input):
    return " ".join(f"--{view} {input[view]}" for view in GRAD_METHODS[wildcards.method])


def prune_score(wildcards):
    """Only the PIP variants depend on prune.score (so changing it does not rerun the baselines)."""
    return config["prune"]["score"] if wildcards.method == "pip" else "none"


def grad_model(wildcards):
    """The model whose gradients are taken: the dense one (base) or the model before round r."""
    if wildcards.where == "base":
        return "results/base/model"
    stage, r = re.fullmatch(r"(.+)/round_(\d+)", wildcards.where).groups()
    return f"results/{stage}/round_{int(r) - 1}/model"


def grad_round(wildcards):
    return 1 if wildcards.where == "base" else int(wildcards.where.rsplit("_", 1)[1])


def stage_model(wildcards):
    """The model a stage evaluates: dense (base) or a variant's last round."""
    if wildcards.stage == "base":
        return "results/base/model"
    return f"results/{wildcards.stage}/round_{n_rounds(wildcards.stage)}/model"


def maybe_temp(path):
    return path if config["gradients"]["keep"] else temp(path)


def eval_datasets_json():
    return json.dumps(config["eval"]["datasets"], separators=(",", ":"))
