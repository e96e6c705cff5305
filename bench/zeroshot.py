"""Benchmark: dense SmolLM2-135M (embedded) on the seven zero-shot tasks, offline from shared/data, with lm-eval.

Per task: acc, acc_norm, the headline metric of the average (acc_norm for HellaSwag, ARC-e, ARC-c, OBQA, PIQA; acc
for BoolQ, WinoGrande), the number of examples (the first `--limit` of each file), wall and CPU seconds (CPU =
process time summed over the torch threads; wall depends on how busy the machine is, so the load average is kept).

    python bench/zeroshot.py [--data-dir ../shared/data] [--limit 200] [--threads 2] [--out bench/out/zeroshot.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data", help="shared/data layout")
    p.add_argument("--limit", type=int, default=200, help="first N examples of every task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=REPO / "bench/out/zeroshot.json")
    ns = p.parse_args()
    command = shlex.join(["python3", *sys.argv])
    print(f"command: {command}", flush=True)

    from pipsteps.files import setup_logging
    from pipsteps.prepare_model import PrepareConfig
    from pipsteps.prepare_model import run as prepare
    from pipsteps.zeroshot import ZeroShotConfig
    from pipsteps.zeroshot import run as zeroshot
    from pipsteps.zeroshot_tasks import TASKS

    setup_logging()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="zs-bench-") as tmp:
        t = time.perf_counter()
        info = prepare(PrepareConfig(source="embedded:smollm2"), Path(tmp) / "model")
        prepare_s = time.perf_counter() - t
        cfg = ZeroShotConfig(tasks=TASKS, data_dir=str(ns.data_dir), limit=str(ns.limit), batch_size=ns.batch_size,
                             device="cpu", dtype="float32", threads=ns.threads)
        res = zeroshot(cfg, Path(tmp) / "model")
    keep = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "headline_metric", "headline", "n", "n_total",
            "wall_s", "cpu_s")
    out = {"command": command, "model": "embedded:smollm2 (SmolLM2-135M-Instruct, fp32)",
           "params_total": info["params_total"], "limit_per_task": ns.limit, "num_fewshot": 0,
           "cpu_cores": os.cpu_count(), "torch_threads": ns.threads, "batch_size": ns.batch_size,
           "load_avg_1min_start_end": [load_start, round(os.getloadavg()[0], 2)],  # the machine may be shared
           "lm_eval_version": res["lm_eval_version"], "prepare_model_s": round(prepare_s, 1),
           "eval_wall_s": round(res["wall_s"], 1),
           "tasks": {t: {k: r.get(k) for k in keep} for t, r in res["tasks"].items()},
           "average": res["average"], "average_rule": res["average_rule"]["text"]}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(out, indent=2) + "\n")

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    print(f"\ncommand: {command}\nwritten: {ns.out}\n")
    print("| task | n | acc | acc_norm | average uses | wall s | CPU s |\n|---|---|---|---|---|---|---|")
    for task, r in out["tasks"].items():
        print(f"| {task} | {r['n']} | {pct(r['acc'])} | {pct(r['acc_norm'])} | {r['headline_metric']} "
              f"| {r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    print(f"| **average** ({out['average']['n_tasks']} tasks) | | | | {pct(out['average']['value'])} "
          f"| {out['eval_wall_s']:.1f} total | |")


if __name__ == "__main__":
    main()
