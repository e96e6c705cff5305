"""What a workflow run does, from its validated config (torch-free, pure): the variants, what each round reads
and the flags of every step. The rules call these through `P = RunPlan(config)` (workflow/rules/common.smk); the
input and params functions take Snakemake's `wildcards` (any object with the wildcard names as attributes).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

from pipsteps import layout as L
from pipsteps import methods
from pipsteps.zeroshot_tasks import check_tasks_config, resolve_files

COMPUTE_KEYS = ("device", "dtype", "device_map", "require_gpu")


def R(path: str) -> str:
    """A path of the results layout (pipsteps.layout) in the workflow's results directory."""
    return f"{L.RESULTS}/{path}"


def is_local(source: str) -> bool:
    return os.path.isabs(source) or source.startswith((".", "~"))


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class RunPlan:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    # ------------------------------------------------------------ checks before any job runs (ValueError: one line)
    def check_paths(self) -> None:
        """Local inputs that do not exist (cheap checks before any heavy work)."""
        c, problems = self.config, []
        if is_local(c["model"]["source"]) and not Path(c["model"]["source"]).expanduser().is_dir():
            problems.append(f"model.source: model path does not exist: {c['model']['source']}")
        files = [("calibration.source", c["calibration"]["source"])]
        files += [(f"eval.datasets.{d['name']}", d["source"]) for d in c["eval"]["datasets"]]
        if c["recovery"]["enabled"]:  # an empty source: check_combinations
            files.append(("recovery.source", c["recovery"]["source"].strip()))
        for key, src in files:
            if (is_local(src) or src.endswith((".txt", ".json", ".jsonl"))) and not Path(src).expanduser().is_file():
                problems.append(f"{key}: file not found: {src}")
        if problems:
            raise ValueError("; ".join(problems))

    def check_tasks(self) -> None:
        """A zero-shot setup that cannot run (only when enabled): limit keys, missing local files or fields, unknown
        task names (a PipError)."""
        if self.tasks_cfg()["enabled"]:
            check_tasks_config(self.tasks_cfg())

    # ------------------------------------------------------------ flags shared by many rules
    def optional(self, key: str) -> str | None:
        """A nullable config string (section.name) for a `:q` shell field: "" becomes None, which the steps read
        as unset (`:q` leaves an empty string unquoted, so the flag would lose its argument)."""
        section, name = key.split(".")
        return self.config[section][name] or None

    def compute_flags(self, keys: tuple[str, ...] = COMPUTE_KEYS) -> str:
        """compute.* as the step flags of every rule that can run on a GPU (--device … --dtype … --device-map …
        --require-gpu …), each value shell-quoted."""
        c = self.config["compute"]
        return " ".join(f"--{k.replace('_', '-')} {shlex.quote(str(c[k]))}" for k in keys)

    # ------------------------------------------------------------ variants and their rounds
    def variants(self) -> list[str]:
        """Stage names unit/method/rRATIO of every pruned variant. Without prune.grid: the main method first, then
        the baselines. With it: units × ratios × methods (each list defaults to the main keys), random once per
        grid seed (random_sN), depth-only methods skipped for width."""
        p = self.config["prune"]
        grid = p.get("grid") or {}
        units = grid.get("units") or [p["unit"]]
        ratios = grid.get("ratios") or [p["target_ratio"]]
        names = list(dict.fromkeys(grid.get("methods") or [p["method"], *p["baselines"]]))
        if grid.get("seeds"):
            names = [x for m in names for x in ([f"random_s{s}" for s in grid["seeds"]] if m == "random" else [m])]
        return list(dict.fromkeys(L.variant(u, m, float(r)) for u in units for r in ratios for m in names
                                  if methods.applies(u, m)))

    def variant_seed(self, wildcards) -> int:
        """Seed N of random_sN variants, prune.seed of random; 0 for the deterministic methods (so prune.seed
        reruns only the random variants)."""
        m = re.fullmatch(r"random_s(\d+)", wildcards.method)
        if m:
            return int(m.group(1))
        return self.config["prune"]["seed"] if wildcards.method == "random" else 0

    def plan_flags(self, wildcards) -> str:
        """Only the keys of the variant's unit, so that a width setting does not rerun the depth plans (and back)."""
        u = self.unit_config(wildcards.unit)
        common = f"--protect-first {u['protect_first']} --protect-last {u['protect_last']}"
        if wildcards.unit == "width":
            return f"--rounds {u['rounds']} --ranking {u['ranking']} {common}"
        return f"--layers-per-round {u['layers_per_round']} {common}"

    def unit_config(self, unit: str) -> dict[str, Any]:
        """The unit's own settings block (prune.depth or prune.width)."""
        return self.config["prune"][unit]

    def first_rounds(self) -> list[str]:
        """Round 1 of every variant, as static inputs of the summary: every consumer of the dense gradients and of
        the block influence is in the DAG from the start, before any plan checkpoint has finished, so a dry run
        already lists those shared jobs once, next to every variant's first round."""
        return [R(L.round_record(v, 1)) for v in self.variants()]

    @staticmethod
    def variant_dir(wildcards) -> str:
        return R(L.variant(wildcards.unit, wildcards.method, wildcards.ratio))

    def previous_model(self, wildcards) -> str:
        """Round r prunes the model of round r-1; round 1 prunes the dense model (recursive chain of rounds)."""
        r = int(wildcards.round)
        return R(L.model(L.DENSE)) if r == 1 else f"{self.variant_dir(wildcards)}/round_{r - 1}/model"

    def needs(self, wildcards) -> methods.Needs:
        """The cached inputs a variant's rounds read (pipsteps.methods.needs; the configured score of its unit)."""
        return methods.needs(wildcards.unit, wildcards.method, self.unit_config(wildcards.unit)["score"])

    def round_inputs(self, wildcards) -> dict[str, str]:
        """What a round reads. Round 1: the dense model's gradient files (shared by every variant). A later round of
        a gradient method: the calibration views it takes its own gradients on, in its own job. Plus the
        calibration views of the forward-only scores and (one-shot block_influence) the dense block influence."""
        need = self.needs(wildcards)
        first = int(wildcards.round) == 1
        files = {view: R(L.dense_grads(view)) for view in need.grads} if first else {}
        views = set(need.calib) | (set() if first else set(methods.grad_calib_views(need.grads)))
        files |= {f"calib_{v}": R(L.calib_view(v)) for v in ("clean", "perturbed", "control") if v in views}
        if need.influence:
            files["influence"] = R(f"{L.DENSE}/block_influence.json")
        return files

    def input_flags(self, wildcards, input) -> str:
        """One prune-step flag per input of round_inputs (--clean, --calib-clean, --influence, ...)."""
        return " ".join(f"--{key.replace('_', '-')} {input[key]}" for key in self.round_inputs(wildcards))

    def own_grads(self, wildcards) -> bool:
        """Rounds r ≥ 2 of a gradient method take their gradients in the round's own job."""
        return int(wildcards.round) > 1 and bool(self.needs(wildcards).grads)

    def runs_model(self, wildcards) -> bool:
        return self.own_grads(wildcards) or bool(self.needs(wildcards).calib)

    def round_flags(self, wildcards, threads) -> str:
        """Compute flags of a round that runs the model (its own gradients, or a forward-only score: sleb,
        block_influence_iter, ablation scores); a round that only reads files scores and prunes on the CPU."""
        if not self.runs_model(wildcards):
            return ""
        g, c = self.config["gradients"], self.config["compute"]
        flags = f"{self.compute_flags()} --micro-batch {g['micro_batch']} --threads {threads}"
        if not self.own_grads(wildcards):
            return flags
        keep = f" --keep-grads {self.variant_dir(wildcards)}/round_{wildcards.round}" if g["keep"] else ""
        return (f"{flags} --own-grads true --save-dtype {g['save_dtype']} --lean {c['lean_grads']}"
                f" --checkpointing {c['grad_checkpointing']}{keep}")

    def round_threads(self, wildcards) -> int:
        return 2 if self.runs_model(wildcards) else 1

    def round_gpu(self, wildcards) -> int:
        return 1 if self.runs_model(wildcards) else 0

    def prune_score(self, wildcards) -> str:
        """Only the PIP variants depend on their unit's score (prune.depth.score, prune.width.score), so changing
        one does not rerun the baselines or the other unit; pip-SCORE variants carry their own."""
        base, explicit, _ = methods.parse(wildcards.method)
        if base not in methods.PIP_METHODS:
            return "none"
        return explicit or self.unit_config(wildcards.unit)["score"]

    @staticmethod
    def grad_calib(wildcards) -> dict[str, str]:
        """The calibration view a dense gradient file is taken on; the per-sample view psdiff pairs the clean
        windows with their perturbations (pipsteps.gradients --paired)."""
        src, paired = methods.GRAD_SOURCES[wildcards.view]
        return {"calib": R(L.calib_view(src)), **({"paired": R(L.calib_view(paired))} if paired else {})}

    @staticmethod
    def paired_flag(wildcards, input) -> str:
        return f"--paired {input.paired}" if "paired" in input.keys() else ""

    @staticmethod
    def stage_model(wildcards) -> str:
        """The model a stage evaluates: dense (base), a variant's final model, or its LoRA-recovered model."""
        return R(L.model(wildcards.stage))

    # ------------------------------------------------------------ stages, recovery and evaluation
    def recovery_enabled(self) -> bool:
        return self.config["recovery"]["enabled"]

    def recovered_stages(self) -> list[str]:
        """The recovered stage unit/method/rRATIO/recovered of every variant, when recovery is enabled."""
        return [L.recovered(v) for v in self.variants()] if self.recovery_enabled() else []

    def all_stages(self) -> list[str]:
        """Every evaluated stage: dense, then each variant followed by its recovered model (recovery.enabled)."""
        return [L.DENSE, *(s for v in self.variants() for s in ([v, L.recovered(v)] if self.recovery_enabled()
                                                                else [v]))]

    def recovered_task_outputs(self) -> list[str]:
        """tasks.json of the recovered stages when both recovery and the zero-shot tasks are enabled."""
        if not (self.recovery_enabled() and self.tasks_cfg()["enabled"]):
            return []
        return [R(L.evaluation(s, "tasks")) for s in self.recovered_stages()]

    def eval_datasets_json(self) -> str:
        return _json(self.config["eval"]["datasets"])

    def tasks_cfg(self) -> dict[str, Any]:
        return self.config["eval"]["tasks"]

    def task_files(self) -> dict[str, str]:
        """Task -> local file for the tasks read offline (explicit files entries, else data_dir's standard files)."""
        t = self.tasks_cfg()
        return {k: str(v) for k, v in resolve_files(t["names"], t["files"], t["data_dir"]).items()}

    def zeroshot_outputs(self) -> list[str]:
        """Every stage's tasks.json when the zero-shot tasks are enabled (summarize consumes them), else none."""
        if not self.tasks_cfg()["enabled"]:
            return []
        return [R(L.evaluation(s, "tasks")) for s in [L.DENSE, *self.variants()]]

    def tasks_limit_json(self) -> str:
        return _json(self.tasks_cfg()["limit"])

    def task_files_json(self) -> str:
        return _json(self.task_files())

    # ------------------------------------------------------------ MLflow, efficiency, plots
    def tracking_uri(self) -> str:
        """The configured server, or MLflow's zero-set-up default: sqlite:///mlflow.db in the working directory."""
        return self.config["mlflow"]["tracking_uri"] or "sqlite:///mlflow.db"

    def tracking_experiment(self) -> str:
        return self.config["mlflow"]["experiment"] or self.config["experiment"]

    def tracking_targets(self) -> list[str]:
        return [R("mlflow/tracking.json")] if self.config["mlflow"]["enabled"] else []

    def efficiency_cfg(self) -> dict[str, Any]:
        return self.config["eval"]["efficiency"]

    def variant_models(self) -> list[str]:
        """The final model of every pruned variant, in variants() order."""
        return [R(L.model(v)) for v in self.variants()]

    def efficiency_outputs(self) -> list[str]:
        """efficiency.json of every pruned variant, in variants() order (one job measures them all, and the dense
        model once)."""
        if not self.efficiency_cfg()["enabled"]:
            return []
        return [R(L.evaluation(s, "efficiency")) for s in self.variants()]

    def score_plots(self) -> list[str]:
        """layer_scores / width_scores when the run has a depth / width variant with scores (random has none)."""
        units = {v.split("/")[0] for v in self.variants() if methods.parse(v.split("/")[1])[0] != "random"}
        return [n for n, u in (("layer_scores", "depth"), ("width_scores", "width")) if u in units]

    def plot_targets(self) -> list[str]:
        """The PNGs the default target builds: the score plots that apply, the run plots, and the latency plot
        with eval.efficiency."""
        pngs = [*self.score_plots(), "removed_layers", "metric_vs_ratio"]
        pngs += ["latency"] if self.efficiency_cfg()["enabled"] else []
        return [R(f"plots/{name}.png") for name in pngs]
