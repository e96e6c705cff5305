# Config validation, wildcard constraints and every helper function. No rules here.
import json
import os
import re
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from pipsteps import deps, methods
from pipsteps.config import ConfigError, check_config
from pipsteps.zeroshot_tasks import check_tasks_config, local_inputs, resolve_files

SCHEMA = f"{workflow.basedir}/workflow/schemas/config.schema.yaml"
try:
    check_config(config, SCHEMA)  # one-line error naming the key, before any job runs
except ConfigError as e:
    raise WorkflowError(str(e))
validate(config, SCHEMA)  # fills in the schema defaults


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
    where=rf"{VARIANT_RE}/round_\d+",  # round r ≥ 2 gradients; the dense ones have no where wildcard
    stage=rf"base|{VARIANT_RE}(/recovered)?",


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
    files = [("calibration.source", config["calibration"]["source"])] + [
        (f"eval.datasets.{d['name']}", d["source"]) for d in config["eval"]["datasets"]
    ]
    if config["recovery"]["enabled"]:  # an empty source: check_combinations
        files.append(("recovery.source", config["recovery"]["source"].strip()))
    for key, src in files:
        if (_is_local(src) or src.endswith((".txt", ".json", ".jsonl"))) and not Path(
            src
        ).expanduser().is_file():
            problems.append(f"{key}: file not found: {src}")
    if problems:
        raise WorkflowError("; ".join(problems))


_check_paths()


def step_code(name):
    """The step's module and every pipsteps module it imports (pipsteps.deps), as inputs: editing any of them
    reruns the step."""
    return deps.step_files(name, f"{workflow.basedir}/pipsteps")


def optional(key):
    """A nullable config string (section.name) for a `:q` shell field: "" becomes None, which the steps read as
    unset (`:q` leaves an empty string unquoted, so the flag would lose its argument)."""
    section, name = key.split(".")
    return config[section][name] or None


COMPUTE_KEYS = ("device", "dtype", "device_map", "require_gpu")


def compute_flags(keys=COMPUTE_KEYS):
    """compute.* as the step flags of every rule that can run on a GPU (--device … --dtype … --device-map …
    --require-gpu …), each value shell-quoted."""
    c = config["compute"]
    return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(c[k]))}" for k in keys)


def fmt_ratio(r):
    return format(float(r), "g")


def variants():
    """Stage names unit/method/rRATIO of every pruned variant. Without prune.grid: the main method first, then
    the baselines. With it: units × ratios × methods (each list defaults to the main keys), random once per
    grid seed (random_sN), depth-only methods skipped for width."""
    p = config["prune"]
    grid = p.get("grid") or {}
    units = grid.get("units") or [p["unit"]]
    ratios = grid.get("ratios") or [p["target_ratio"]]
    names = list(dict.fromkeys(grid.get("methods") or [p["method"], *p["baselines"]]))
    seeds = grid.get("seeds")
    if seeds:
        names = [
            x for m in names for x in ([f"random_s{s}" for s in seeds] if m == "random" else [m])
        ]
    return list(
        dict.fromkeys(
            f"{u}/{m}/r{fmt_ratio(r)}"
            for u in units
            for r in ratios
            for m in names
            if methods.applies(u, m)
        )
    )


def variant_seed(wildcards):
    """Seed N of random_sN variants, prune.seed of random; 0 for the deterministic methods (so prune.seed reruns
    only the random variants)."""
    m = re.fullmatch(r"random_s(\d+)", wildcards.method)
    if m:
        return int(m.group(1))
    return config["prune"]["seed"] if wildcards.method == "random" else 0


def plan_flags(wildcards):
    """Only the keys of the variant's unit, so that a width setting does not rerun the depth plans (and back)."""
    p = config["prune"]
    common = f"--protect-first {p['protect_first']} --protect-last {p['protect_last']}"
    if wildcards.unit == "width":
        return f"--rounds {p['width_rounds']} --ranking {p['ranking']} {common}"
    return f"--layers-per-round {p['layers_per_round']} {common}"


def first_rounds():
    """Round 1 of every variant, as static inputs of the summary: every consumer of the dense gradients and of
    the block influence is in the DAG from the start, before any plan checkpoint has finished, so a dry run
    already lists those shared jobs once, next to every variant's first round."""
    return expand("results/{stage}/round_1/round.json", stage=variants())


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


def variant_needs(wildcards):
    """The cached inputs a variant's rounds read (pipsteps.methods.needs; the configured score of its unit)."""
    score = config["prune"]["width_score" if wildcards.unit == "width" else "score"]
    return methods.needs(wildcards.unit, wildcards.method, score)


def round_grads(wildcards):
    """The gradient files, calibration views and (one-shot block_influence) the dense model's block influence a
    round's scores read."""
    need = variant_needs(wildcards)
    files = {view: f"{grads_dir(wildcards)}/grads_{view}.safetensors" for view in need.grads}
    files |= {f"calib_{view}": f"results/calibration/{view}.safetensors" for view in need.calib}
    if need.influence:
        files["influence"] = "results/base/block_influence.json"
    return files


def grads_flags(wildcards, input):
    """One prune-step flag per input round_grads gives (--clean, --psdiff, --calib-clean, --influence, ...)."""
    return " ".join(f"--{key.replace('_', '-')} {input[key]}" for key in round_grads(wildcards))


def forward_flags(wildcards, threads):
    """Compute flags of the forward-only scores (sleb, block_influence_iter, ablation scores): they run on
    compute.device (compute.require_gpu honoured) in the model's stored dtype, on one device (the round prunes
    and saves the model on the CPU); the other scores only read files."""
    if not variant_needs(wildcards).calib:
        return ""
    return (
        f"{compute_flags(('device', 'require_gpu'))}"
        f" --micro-batch {config['gradients']['micro_batch']} --threads {threads}"
    )


def forward_threads(wildcards):
    return 2 if variant_needs(wildcards).calib else 1


def forward_gpu(wildcards):
    return 1 if variant_needs(wildcards).calib else 0


def prune_score(wildcards):
    """Only the PIP variants depend on their unit's score (prune.score for depth, prune.width_score for width),
    so changing one does not rerun the baselines or the other unit; pip-SCORE variants carry their own.
    """
    base, explicit, _ = methods.parse(wildcards.method)
    if base not in methods.PIP_METHODS:
        return "none"
    return explicit or config["prune"]["width_score" if wildcards.unit == "width" else "score"]


def grad_calib(wildcards):
    """The calibration view a gradient file is taken on; the per-sample view psdiff pairs the clean windows with
    their perturbations (pipsteps.gradients --paired)."""
    if wildcards.view == "psdiff":
        return {
            "calib": "results/calibration/clean.safetensors",
            "paired": "results/calibration/perturbed.safetensors",
        }
    return {"calib": f"results/calibration/{wildcards.view}.safetensors"}


def paired_flag(wildcards, input):
    return f"--paired {input.paired}" if "paired" in input.keys() else ""


def grad_model(wildcards):
    """The model whose gradients are taken: the dense one (rule collect_gradients, which has no `where`
    wildcard) or the model before round r (rule collect_round_gradients)."""
    where = wildcards.get("where", "base")
    if where == "base":
        return "results/base/model"
    stage, r = re.fullmatch(r"(.+)/round_(\d+)", where).groups()
    return f"results/{stage}/round_{int(r) - 1}/model"


def grad_round(wildcards):
    where = wildcards.get("where", "base")
    return 1 if where == "base" else int(where.rsplit("_", 1)[1])


def stage_model(wildcards):
    """The model a stage evaluates: dense (base), a variant's last round, or its LoRA-recovered model."""
    if wildcards.stage == "base":
        return "results/base/model"
    if os.path.basename(wildcards.stage) == "recovered":
        return f"results/{wildcards.stage}/model"
    return f"results/{wildcards.stage}/round_{n_rounds(wildcards.stage)}/model"


# ---------------------------------------------------------------- LoRA recovery (recovery.*, rule recover_lora)
def recovery_enabled():
    return config["recovery"]["enabled"]


def recovered_stages():
    """The recovered stage unit/method/rRATIO/recovered of every variant, when recovery is enabled."""
    return [f"{v}/recovered" for v in variants()] if recovery_enabled() else []


def all_stages():
    """Every evaluated stage: dense, then each variant followed by its recovered model (recovery.enabled)."""
    stages = ["base"]
    for v in variants():
        stages += [v, f"{v}/recovered"] if recovery_enabled() else [v]
    return stages


def recovered_task_outputs():
    """tasks.json of the recovered stages when both recovery and the zero-shot tasks are enabled."""
    if not (recovery_enabled() and config["eval"].get("tasks", {}).get("enabled")):
        return []
    return expand("results/{stage}/eval/tasks.json", stage=recovered_stages())


def final_round_model(wildcards):
    """The model LoRA recovers: the variant's last pruning round."""
    stage = f"{wildcards.unit}/{wildcards.method}/r{wildcards.ratio}"
    return f"results/{stage}/round_{n_rounds(stage)}/model"


def maybe_temp(path):
    return path if config["gradients"]["keep"] else temp(path)


def eval_datasets_json():
    return json.dumps(config["eval"]["datasets"], separators=(",", ":"))


# ---------------------------------------------------------------- zero-shot tasks (eval.tasks, rule evaluate_tasks)
def tasks_cfg():
    return config["eval"]["tasks"]


def task_files():
    """Task -> local file for the tasks read offline (explicit files entries, else data_dir's standard files)."""
    t = tasks_cfg()
    return {k: str(v) for k, v in resolve_files(t["names"], t["files"], t["data_dir"]).items()}


def _check_task_files():
    """Fail at parse time on a zero-shot setup that cannot run (only when enabled): limit
    keys, missing local files or fields, unknown task names (check_tasks_config)."""
    if not tasks_cfg()["enabled"]:
        return
    try:
        check_tasks_config(tasks_cfg())
    except Exception as e:
        from pipsteps.io import PipError  # imports torch: only on this error path

        if isinstance(e, PipError):
            raise WorkflowError(str(e))
        raise


_check_task_files()


def zeroshot_outputs():
    """Every stage's tasks.json when the zero-shot tasks are enabled (summarize consumes them), else none."""
    if not tasks_cfg()["enabled"]:
        return []
    return expand("results/{stage}/eval/tasks.json", stage=["base", *variants()])


def tasks_limit_json():
    return json.dumps(tasks_cfg()["limit"], separators=(",", ":"))


def task_files_json():
    return json.dumps(task_files(), separators=(",", ":"))


# ---------------------------------------------------------------- MLflow (mlflow.*, rule track_mlflow)
def tracking_uri():
    """The configured server, or MLflow's zero-set-up default: sqlite:///mlflow.db in the working directory."""
    return config["mlflow"]["tracking_uri"] or "sqlite:///mlflow.db"


def tracking_experiment():
    return config["mlflow"]["experiment"] or config["experiment"]


def tracking_targets():
    return ["results/mlflow/tracking.json"] if config["mlflow"]["enabled"] else []


# ---------------------------------------------------------------- efficiency, plots, report (rules in efficiency.smk, report.smk)
def efficiency_cfg():
    return config["eval"]["efficiency"]


def efficiency_outputs():
    """efficiency.json of every pruned variant (the dense model is measured beside it, in the same job)."""
    if not efficiency_cfg()["enabled"]:
        return []
    return expand("results/{stage}/eval/efficiency.json", stage=variants())


def score_plots():
    """layer_scores / width_scores when the run has a depth / width variant with scores (random has none)."""
    scored = [s.split("/") for s in variants()]
    units = {unit for unit, method, _ in scored if methods.parse(method)[0] != "random"}
    return [n for n, u in (("layer_scores", "depth"), ("width_scores", "width")) if u in units]


def plot_targets():
    """The PNGs the default target builds: the score plots that apply, the run plots, and the latency plot
    with eval.efficiency."""
    pngs = [*score_plots(), "removed_layers", "metric_vs_ratio"]
    pngs += ["latency"] if efficiency_cfg()["enabled"] else []
    return expand("results/plots/{name}.png", name=pngs)
