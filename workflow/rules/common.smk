# Config validation, wildcard constraints and the helpers that need Snakemake itself (checkpoints, temp
# outputs, the workflow's directory). Everything else the rules ask of the config comes from P (pipsteps.runplan).
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pipsteps import deps, methods
from pipsteps import layout as L
from pipsteps.config import ConfigError, check_config
from pipsteps.errors import PipError
from pipsteps.runplan import R, RunPlan, is_local
from pipsteps.zeroshot_tasks import local_inputs

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
try:
    check_config(config, SCHEMA)  # one-line error naming the key, before any job runs
except ConfigError as e:
    raise WorkflowError(str(e))
validate(config, SCHEMA)  # fills in the schema defaults
P = RunPlan(config)
try:
    P.check_paths()  # local inputs that do not exist
    P.check_tasks()  # a zero-shot setup that cannot run
except (ValueError, PipError) as e:
    raise WorkflowError(str(e))


# a variant is {unit}/{method}/r{ratio}; random_sN is the random method with seed N (prune.grid.seeds), pip-SCORE
# a PIP method with an explicit score (pipsteps/methods.py)
UNIT_RE = "depth|width"
METHOD_RE = methods.WILDCARD_RE
VARIANT_RE = rf"(?:{UNIT_RE})/(?:{METHOD_RE})/r0\.\d+"


wildcard_constraints:
    unit=UNIT_RE,
    method=METHOD_RE,
    ratio=r"0\.\d+",
    round=r"\d+",
    view="clean|perturbed|control|psdiff",
    stage=rf"base|{VARIANT_RE}(/recovered)?",


def step_code(name):
    """The step's module and every pipsteps module it imports (pipsteps.deps), as inputs: editing any of them
    reruns the step."""
    return deps.step_files(name, f"{workflow.basedir}/pipsteps")


def n_rounds(stage):
    """Rounds of a variant unit/method/rRATIO, from its plan (a checkpoint: known once the dense model exists)."""
    unit, method, r = stage.split("/")
    plan = checkpoints.plan_rounds.get(unit=unit, method=method, ratio=r[1:])
    return json.loads(Path(plan.output.plan).read_text())["rounds"]


def last_round_model(wildcards):
    """The model of a variant's last round, which becomes its final model (rule final_model)."""
    var = L.variant(wildcards.unit, wildcards.method, wildcards.ratio)
    return R(L.round_model(var, n_rounds(var)))


def round_model_output(path):
    """Round models are temporary unless prune.keep_round_models: only each variant's final model stays."""
    return directory(path) if config["prune"]["keep_round_models"] else temp(directory(path))
