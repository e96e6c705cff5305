"""Step: zero-shot accuracy of one model stage (dense or pruned) with lm-eval on the seven commonsense tasks.

BoolQ, PIQA, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge and OpenBookQA, 0-shot, through the installed lm-eval
(0.4.x) as a library. The model is loaded with pipsteps' own loader (pruned models included) and handed to lm-eval
in memory (`HFLM(pretrained=<model>, tokenizer=<tokenizer>)`). A task mapped to a local file (`--files`, or
`--data-dir` in the layout of docs/evaluation.md) is read offline by the loaders and task definitions in
`pipsteps.zeroshot_tasks`; any other task name is lm-eval's own task, whose dataset comes from the hub.

Per task it records acc and acc_norm (where lm-eval reports it), their standard errors, the number of examples and
the wall and CPU seconds. The average follows one rule (`AVERAGE_RULE`): acc_norm for HellaSwag, ARC-e, ARC-c,
OBQA and PIQA, acc for BoolQ and WinoGrande. `--limit` evaluates the first N examples of each task (CPU runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps.compute import ComputeConfig
from pipsteps.errors import PipError
from pipsteps.files import write_json
from pipsteps.io import Timer, count_params, resolve_device, resolve_dtype, set_threads
from pipsteps.surgery import load_model, load_tokenizer
from pipsteps.zeroshot_tasks import (AVERAGE_RULE, HEADLINE_METRIC, LOADERS, TASKS, headline_metric, resolve_files,
                                     task_config, unknown_task_message)

log = logging.getLogger("pipsteps.zeroshot")

# lm-eval's default seeds, set before every task (0-shot log-likelihood scoring does not sample; this pins them)
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


@dataclass(frozen=True)
class ZeroShotConfig(ComputeConfig):
    tasks: tuple[str, ...] = field(default=TASKS, metadata={"help": "lm-eval task names"})
    limit: str = field(default="null", metadata={"help": "examples per task: JSON null (all), N, or {task: N}"})
    files: str = field(default="{}", metadata={"help": "JSON {task: local file}; read offline (pipsteps.zeroshot_tasks)"})
    data_dir: str | None = field(default=None, metadata={"help": "directory in the docs/evaluation.md layout for the "
                                                                 "tasks without a --files entry"})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size (requests per forward)"})


def parse_limits(spec: str, tasks: Sequence[str]) -> dict[str, int | None]:
    """`null` | N | {task: N} -> {task: N or None}; a limit must be a positive integer (lm-eval reads <1 as a
    fraction and 0 as nothing at all)."""
    try:
        value = json.loads(spec)
    except json.JSONDecodeError:
        raise PipError(f"eval.tasks.limit: not valid JSON: {spec!r}") from None
    if isinstance(value, dict):
        for t in value:
            if t not in tasks:
                raise PipError(f"eval.tasks.limit.{t}: {t!r} is not one of the evaluated tasks ({', '.join(tasks)})")
        limits, where = {t: value.get(t) for t in tasks}, "eval.tasks.limit.{}"
    else:
        limits, where = {t: value for t in tasks}, "eval.tasks.limit"
    for t, v in limits.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise PipError(f"{where.format(t)}: {v!r} is not a positive integer (examples of task {t} to evaluate; "
                           "null = all)")
    return limits


def _task_manager(hub: list[str]):
    """lm-eval's full task index (about 10 s to build) only when some task comes from it."""
    from lm_eval.tasks import TaskManager

    if not hub:
        return TaskManager(include_defaults=False)
    tm = TaskManager()
    known = set(tm.all_subtasks)
    for name in hub:
        if name in known:
            continue
        if name in tm.all_tasks:
            raise PipError(f"eval.tasks.names: {name!r} is an lm-eval group or tag, not a single task; list its tasks")
        raise PipError(unknown_task_message(name, sorted(known)))
    return tm


def build_tasks(cfg: ZeroShotConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Every task object (local rows read and checked, hub datasets fetched) before any model is loaded."""
    if not cfg.tasks:
        raise PipError("eval.tasks.names: no tasks given")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise PipError(f"eval.tasks.names: duplicate task in {list(cfg.tasks)}")
    try:
        files = json.loads(cfg.files)
    except json.JSONDecodeError as e:
        raise PipError(f"eval.tasks.files: not valid JSON: {e}") from None
    local = resolve_files(cfg.tasks, files, cfg.data_dir)
    tm = _task_manager([t for t in cfg.tasks if t not in local])
    tasks, sources = {}, {}
    for name in cfg.tasks:
        if name in local:
            spec: Any = task_config(name, LOADERS[name](local[name]), local[name])
            sources[name] = f"local:{local[name]}"
        else:
            spec, sources[name] = name, "lm-eval"
        try:
            tasks[name] = tm.load([spec])["tasks"][name]
        except PipError:
            raise
        except Exception as e:  # lm-eval/datasets raise many types; keep the first line of the cause
            cause = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            hint = "" if name in local else f"; offline, map it to a local file (eval.tasks.files.{name} or data_dir)"
            raise PipError(f"eval.tasks: task {name}: lm-eval could not build it ({cause}){hint}") from None
    return tasks, sources


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `acc,none` / `acc_stderr,none` keys -> acc / acc_stderr (numbers only)."""
    return {k.split(",")[0]: float(v) for k, v in result.items()
            if "," in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def average(per_task: dict[str, dict[str, Any]]) -> dict[str, Any]:
    scores = {t: r["headline"] for t, r in per_task.items() if r.get("headline") is not None}
    value = sum(scores.values()) / len(scores) if scores else None
    return {"value": value, "n_tasks": len(scores), "tasks": list(scores)}


def evaluate_task(lm: Any, task: Any, limit: int | None) -> dict[str, Any]:
    """One task, 0-shot, with lm-eval's default seeds: what `simple_evaluate` does for a ready model and task, minus
    its per-call environment report (a `pip list` subprocess, about a second per task)."""
    import random

    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    random.seed(SEEDS["random_seed"])
    np.random.seed(SEEDS["numpy_random_seed"])
    torch.manual_seed(SEEDS["torch_random_seed"])
    task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=SEEDS["fewshot_random_seed"])
    return evaluate(lm=lm, task_dict={"tasks": {task.task_name: task}, "groups": {}, "group_map": {}}, limit=limit,
                    bootstrap_iters=1000, log_samples=False)


def run(cfg: ZeroShotConfig, model_dir: Path) -> dict[str, Any]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    set_threads(cfg.threads)
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    limits = parse_limits(cfg.limit, cfg.tasks)
    if cfg.batch_size < 1:
        raise PipError(f"eval.tasks.batch_size: {cfg.batch_size} is not a positive integer")
    with Timer() as t:
        tasks, sources = build_tasks(cfg)
        model = load_model(model_dir, device, resolve_dtype(cfg.dtype, device), device_map=cfg.device_map)
        lm = HFLM(pretrained=model, tokenizer=load_tokenizer(model_dir), batch_size=cfg.batch_size)
        per_task: dict[str, dict[str, Any]] = {}
        for name, task in tasks.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            res = evaluate_task(lm, task, limits[name])
            m = _metrics(res["results"][name])
            head = headline_metric(name)
            n = res["n-samples"][name]
            per_task[name] = {**m, "headline_metric": head, "headline": m.get(head), "n": n["effective"],
                              "n_total": n["original"], "source": sources[name],
                              "wall_s": round(time.perf_counter() - wall0, 2),
                              "cpu_s": round(time.process_time() - cpu0, 2)}
            log.info("%s: %s = %s on %d of %d examples (%.1f s)", name, head, m.get(head), n["effective"],
                     n["original"], per_task[name]["wall_s"])
    avg = average(per_task)
    log.info("average (%d tasks) = %s", avg["n_tasks"], avg["value"])
    params = count_params(model)
    return {"tasks": per_task, "average": avg,
            "average_rule": {"text": AVERAGE_RULE, "headline_metric": HEADLINE_METRIC, "other_tasks": "acc"},
            "num_fewshot": 0, "limits": limits, "lm_eval_version": lm_eval.__version__, "seeds": SEEDS,
            "params_total": params["total"], "num_layers": model.config.num_hidden_layers,
            "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb, "device": str(device)}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory to evaluate")
        p.add_argument("--stage", default="", help="stage name recorded in the output (dense, pruned variant)")
        p.add_argument("--metrics", required=True, type=Path, help="output JSON")

    cfg, ns = cli.parse(ZeroShotConfig, argv, __doc__.splitlines()[0], extra)
    metrics = run(cfg, ns.model)
    write_json(ns.metrics, {"config": asdict(cfg), "stage": ns.stage, **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
