"""Benchmark: the default workflow from scratch on this machine, then a no-op rerun.

Records the wall time of every rule (summed over its jobs, from Snakemake's benchmark files), the total, the
no-op rerun time, what a model-loading job pays before any compute (a fresh Python process that imports the step
stack and loads the dense model, median of 3) times the number of such jobs, and dense vs pruned perplexities:
PIP against the workflow's random baseline and against `--random-seeds` further random draws of the same number
of layers (evaluated the same way, after the timing).

    python bench/run_default.py [--config config.yaml] [--out bench/out/default.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipsteps first

from pipsteps import layout as L  # noqa: E402  (torch-free)


def dense_model(workdir: Path) -> Path:
    return workdir / L.RESULTS / L.model(L.DENSE)


def snakemake(workdir: Path, config: Path, *args: str) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--workflow-profile", str(REPO / "profiles/default"), *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def rule_times(workdir: Path) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "max_rss_mb": 0.0})
    for f in (workdir / "benchmarks").rglob("*.tsv"):
        rule = f.relative_to(workdir / "benchmarks").parts[0]
        row = next(csv.DictReader(f.open(), delimiter="\t"))
        t = times[rule]
        t["jobs"] += 1
        t["wall_s"] = round(t["wall_s"] + float(row["s"]), 2)
        rss = row.get("max_rss", "NA")
        t["max_rss_mb"] = max(t["max_rss_mb"], float(rss) if rss not in ("NA", "-") else 0.0)
    return dict(sorted(times.items()))


# Rules whose jobs start a Python process that imports torch and transformers and loads a model.
MODEL_RULES = ("collect_gradients", "prune_round", "evaluate_ppl", "measure_efficiency", "block_influence",
               "recover_lora", "evaluate_tasks")
STARTUP = "from pipsteps.surgery import load_model; load_model({path!r}, 'cpu')"


def startup(workdir: Path, rules: dict[str, dict[str, float]], repeats: int = 3) -> dict[str, float | str]:
    """Per-job start-up (interpreter, imports, loading the dense model) and its share of the summed rule times; a
    failed measurement is recorded as `error` (its last line), so the run's other figures are still written."""
    walls = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", STARTUP.format(path=str(dense_model(workdir)))],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
        walls.append(time.perf_counter() - t)
    per_job = round(sorted(walls)[len(walls) // 2], 2)
    jobs = sum(int(r["jobs"]) for name, r in rules.items() if name in MODEL_RULES)
    summed = sum(r["wall_s"] for r in rules.values())
    return {"per_job_s": per_job, "model_jobs": jobs, "share_s": round(per_job * jobs, 1),
            "rules_sum_s": round(summed, 1), "rest_s": round(summed - per_job * jobs, 1)}


def random_seeds(workdir: Path, config: Path, seeds: list[int]) -> list[dict]:
    """Extra random depth baselines (other seeds, same layer count, same evaluation) so PIP vs random is not one draw
    (depth runs only: a width run's random baseline is one draw)."""
    import random

    import yaml

    from pipsteps.evaluate import EvalConfig
    from pipsteps.evaluate import run as evaluate
    from pipsteps.surgery import load_model, load_tokenizer, read_manifest, remove_layers, save_pruned

    cfg = yaml.safe_load(config.read_text())
    ev = cfg.get("eval", {})
    eval_cfg = EvalConfig(datasets=json.dumps(ev.get("datasets", [{"name": "heldout", "source": "embedded:heldout"}])),
                          seq_lens=tuple(ev.get("seq_lens", (128, 2048))), max_tokens=ev.get("max_tokens", 0),
                          threads=2)
    plan = json.loads(next((workdir / "results").rglob("random/*/plan.json")).read_text())
    base = dense_model(workdir)
    out = []
    for seed in seeds:
        model = load_model(base, "cpu")
        removed = sorted(random.Random(f"bench:{seed}").sample(range(plan["num_layers"]), plan["layers_to_remove"]))
        remove_layers(model, removed)
        manifest = read_manifest(base)
        manifest.update(kept_layers=[i for i in range(plan["num_layers"]) if i not in removed], removed_layers=removed)
        target = workdir / f"bench_random_{seed}"
        save_pruned(model, load_tokenizer(base), target, manifest)
        out.append({"seed": seed, "removed_layers": removed, "ppl": evaluate(eval_cfg, target)["ppl"]})
        shutil.rmtree(target)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--out", type=Path, default=REPO / "bench/out/default.json")
    p.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temp dir, removed)")
    p.add_argument("--random-seeds", type=int, default=4, help="extra random-removal draws to compare PIP against")
    ns = p.parse_args()
    workdir = ns.workdir or Path(tempfile.mkdtemp(prefix="pip-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    shutil.copy(ns.config, config)
    total = snakemake(workdir, config)
    noop = snakemake(workdir, config)
    rows = list(csv.DictReader((workdir / "results/summary.tsv").open(), delimiter="\t"))
    rules = rule_times(workdir)
    result = {"config": str(ns.config), "cpu_cores": os.cpu_count(), "total_wall_s": round(total, 1),
              "noop_rerun_s": round(noop, 2), "jobs": sum(int(r["jobs"]) for r in rules.values()), "rules": rules,
              "startup": startup(workdir, rules), "summary": rows,
              "targets": {"total_le_180_s": total <= 180, "noop_le_3_s": noop <= 3}}
    ppl_cols = [c for c in rows[0] if c.startswith("ppl_")]
    by_method = {r["method"]: r for r in rows}
    if "pip" in by_method and "random" in by_method:
        result["pip_beats_random"] = {c: float(by_method["pip"][c]) < float(by_method["random"][c]) for c in ppl_cols}
        depth = "removed_layers" in rows[0] and by_method["random"]["removed_layers"] != "-"
        extra = random_seeds(workdir, config, list(range(1, ns.random_seeds + 1))) if depth else []
        result["random_extra_seeds"] = extra
        for c in ppl_cols:
            ds, L = c.removeprefix("ppl_").split("@")
            draws = [float(by_method["random"][c])] + [e["ppl"][ds][L] for e in extra]
            result[f"pip_vs_random_{c}"] = {"pip": float(by_method["pip"][c]), "random_draws": draws,
                                            "pip_beats": sum(float(by_method["pip"][c]) < d for d in draws)}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=2))
    print((workdir / "results/summary.md").read_text())
    if ns.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
