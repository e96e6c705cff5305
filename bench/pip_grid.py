"""Benchmark (issue #8): the method × score grid on the embedded SmolLM2-135M, one Snakemake run per calibration seed.

Every seed's run is the real workflow (`prune.grid`) in its own work directory with `calibration.seed` = the seed;
the prepared model of the first run is reused by the others (model.source = its directory). Per variant it reads
PPL@128 on a fixed capped slice of WikiText-2 test (the first `--ppl-tokens` tokens of shared/data, non-overlapping
chunks) and the zero-shot average over the seven offline tasks (first `--limit` examples each; also without BoolQ,
whose short slice mostly measures a model's yes/no bias), then writes the mean and spread (min..max, sample std)
over the seeds. Random variants use the seed as their own seed (random_sN), so their spread is the spread over
draws.

    python bench/pip_grid.py --workdir /tmp/pipgrid [--seeds 0 1 2] [--ratios 0.2 0.3] [--limit 40]
        [--tasks-ratios 0.2] [--depth-methods ...] [--width-methods ...] [--drop-models] [--collect-only]
        [--set perturbation.draws=4 ...] [--out bench/out/pip_grid.json]

A finished (seed, ratio) leaves a `done_r{ratio}` marker and is not run again; `--drop-models` deletes the pruned
models after each run (the grid keeps ~0.5 GB per round otherwise); `--collect-only` tabulates what exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipsteps (zeroshot.average), as the workflow runs use (PYTHONPATH)
DEPTH = ["pip", "pip-gap_ablation", "pip-pip_greedy", "sleb", "block_influence", "block_influence_iter", "taylor",
         "magnitude", "random"]
WIDTH = ["pip", "pip-fisher_diff", "pip-taylor_both", "pip-noise_control", "taylor", "magnitude", "random"]


def seed_config(ns: argparse.Namespace, seed: int, ratio: float, model_source: str | None) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experiment"] = f"pip-grid-seed{seed}"
    if model_source:
        cfg["model"]["source"] = model_source
    cfg["calibration"]["seed"] = seed
    # `pip` is the paper's literal reading at both units, whatever config.yaml's default score is; the other PIP
    # scores are explicit pip-SCORE methods
    cfg["prune"].update(seed=seed, depth={**cfg["prune"].get("depth", {}), "score": "norm_diff"},
                        width={**cfg["prune"].get("width", {}), "score": "taylor_diff"})
    methods = list(dict.fromkeys(m for m in ns.depth_methods + ns.width_methods if m != "random")) + ["random"]
    units = [u for u, names in (("depth", ns.depth_methods), ("width", ns.width_methods)) if names]
    cfg["prune"]["grid"] = {"units": units, "methods": methods, "ratios": [ratio], "seeds": [seed]}
    cfg["eval"]["datasets"] = [{"name": "wikitext2", "source": str(ns.data_dir / "wikitext2" / "test.txt")}]
    cfg["eval"].update(seq_lens=[128], max_tokens=ns.ppl_tokens, efficiency={"enabled": False})
    tasks = ns.limit > 0 and ratio in ns.tasks_ratios
    cfg["eval"]["tasks"] = {"enabled": tasks, "data_dir": str(ns.data_dir), "limit": max(ns.limit, 1)}
    cfg["mlflow"] = {"enabled": False}
    for item in ns.set:  # KEY.PATH=YAML value, e.g. perturbation.rate=0.4
        key, _, val = item.partition("=")
        *parents, leaf = key.split(".")
        node = cfg
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(val)
    return cfg


def wanted(ns: argparse.Namespace, unit: str, method: str) -> bool:
    base = "random" if method.startswith("random_s") else method
    return base in (ns.depth_methods if unit == "depth" else ns.width_methods)


def collect(workdir: Path, ns: argparse.Namespace) -> dict[str, dict]:
    """{variant (seedless): {ppl128, zs_avg, zs_tasks, params, ratio, score, removed_layers}} of one seed's run."""
    out = {}
    results = workdir / "results"
    for metrics in sorted(results.glob("*/*/r*/eval/metrics.json")):
        stage = metrics.parent.parent.relative_to(results)
        unit, method, ratio = stage.parts
        if not wanted(ns, unit, method) or float(ratio[1:]) not in ns.ratios:
            continue
        m = json.loads(metrics.read_text())
        tasks = metrics.parent / "tasks.json"
        plan = json.loads((results / stage / "plan.json").read_text())
        last = json.loads((results / stage / f"round_{plan['rounds']}" / "round.json").read_text())
        key = f"{unit}/{'random' if method.startswith('random_s') else method}/{ratio}"
        out[key] = {"ppl128": m["ppl"]["wikitext2"]["128"], **zero_shot(tasks), "params": last["params_after"],
                    "ratio": last["achieved_ratio"], "score": last["score"],
                    "removed_layers": last["removed_layers_so_far"] if unit == "depth" else None}
    dense = json.loads((results / "base/eval/metrics.json").read_text())["ppl"]["wikitext2"]["128"]
    out["dense"] = {"ppl128": dense, **zero_shot(results / "base/eval/tasks.json")}
    return out


def zero_shot(tasks: Path) -> dict:
    """{zs_avg, zs_avg_wo_boolq, zs_tasks: {task: headline accuracy}} of one tasks.json (all None when tasks did not
    run). Without BoolQ (its short slice mostly measures label bias) by the workflow's own rule, zeroshot.average."""
    if not tasks.exists():
        return {"zs_avg": None, "zs_avg_wo_boolq": None, "zs_tasks": None}
    from pipsteps.zeroshot import (
        average,  # imported here: torch is only needed once the runs are done
    )

    data = json.loads(tasks.read_text())
    rest = {t: r for t, r in data["tasks"].items() if t != "boolq"}
    return {"zs_avg": data["average"]["value"], "zs_avg_wo_boolq": average(rest)["value"],
            "zs_tasks": {t: r["headline"] for t, r in data["tasks"].items()}}


def spread(values: list[float | None]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals), "values": vals}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="one sub-directory per seed (kept: reruns are cached)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3])
    p.add_argument("--depth-methods", nargs="*", default=DEPTH, help="none: no depth variants")
    p.add_argument("--width-methods", nargs="*", default=WIDTH, help="none: no width variants")
    p.add_argument("--tasks-ratios", type=float, nargs="*", default=[0.2], help="ratios with zero-shot tasks")
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="capped WikiText-2 slice (tokens)")
    p.add_argument("--limit", type=int, default=40, help="zero-shot examples per task (0: no zero-shot)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides of every seed's run (dotted keys, YAML values), e.g. perturbation.draws=4")
    p.add_argument("--collect-only", action="store_true",
                   help="run nothing: tabulate the variants the work directories already hold (an interrupted grid)")
    p.add_argument("--drop-models", action="store_true",
                   help="delete every round's pruned model after each (seed, ratio) run: the metrics stay, disk is freed")
    p.add_argument("--rerun-triggers", nargs="+", default=["mtime", "params", "input", "software-env", "code"],
                   help="Snakemake rerun triggers (e.g. params input: reuse results across code edits)")
    p.add_argument("--out", type=Path, default=REPO / "bench/out/pip_grid.json")
    ns = p.parse_args()
    ns.data_dir = ns.data_dir.resolve()
    command = shlex.join(["python3", *sys.argv])
    print(f"command: {command}", flush=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs, walls, model_source = {}, {}, None
    for seed in ns.seeds:
        wd = ns.workdir / f"seed{seed}"
        wd.mkdir(parents=True, exist_ok=True)
        t, ran = time.perf_counter(), False
        for ratio in ns.ratios:  # one run per ratio: the zero-shot tasks only where asked (--tasks-ratios)
            done = wd / f"done_r{ratio}"  # a finished (seed, ratio) is not rerun (--drop-models deletes its models)
            if done.exists() or ns.collect_only:
                continue
            ran = True
            cfg = seed_config(ns, seed, ratio, model_source if seed != ns.seeds[0] else None)
            (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml",
                   "--workflow-profile", str(REPO / "profiles/default"), "--cores", str(ns.cores),
                   "--rerun-triggers", *ns.rerun_triggers]
            with open(wd / f"snakemake_r{ratio}.log", "w") as log:
                proc = subprocess.run(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT)
            if proc.returncode:
                sys.exit(f"seed {seed}, ratio {ratio}: snakemake failed (exit {proc.returncode}), see "
                         f"{wd / f'snakemake_r{ratio}.log'}")
            if ns.drop_models:  # the variants' pruned models (about 0.5 GB each round) once evaluated
                for d in (wd / "results").glob(f"*/*/r{ratio}/round_*/model"):
                    shutil.rmtree(d)
            done.write_text("")
        if model_source is None and (wd / "results/base/model").is_dir():  # also when this seed was done before
            model_source = str((wd / "results/base/model").resolve())
        walls[seed] = round(time.perf_counter() - t, 1) if ran else None  # None: every ratio was done before
        runs[seed] = collect(wd, ns)
        print(f"seed {seed}: {len(runs[seed]) - 1} variants in {walls[seed]} s", flush=True)
    keys = sorted({k for r in runs.values() for k in r})
    table = {}
    for k in keys:
        rows = [runs[s][k] for s in ns.seeds if k in runs[s]]
        table[k] = {"ppl128": spread([r["ppl128"] for r in rows]), "zs_avg": spread([r["zs_avg"] for r in rows]),
                    "zs_avg_wo_boolq": spread([r["zs_avg_wo_boolq"] for r in rows]),
                    "zs_tasks": {t: spread([r["zs_tasks"][t] for r in rows if r.get("zs_tasks")])
                                 for t in (rows[0].get("zs_tasks") or {})},
                    **{f: rows[0].get(f) for f in ("params", "ratio", "score")},
                    "removed_layers": {s: runs[s][k].get("removed_layers") for s in ns.seeds if k in runs[s]}}
    ref = seed_config(ns, ns.seeds[0], ns.ratios[0], None)  # the calibration and perturbation every seed used
    cal, pert = ref["calibration"], ref["perturbation"]
    out = {"command": command, "overrides": ns.set, "model": "embedded:smollm2 (SmolLM2-135M-Instruct, fp32)",
           "seeds": ns.seeds,
           "ratios": ns.ratios, "ppl": f"WikiText-2 test, first {ns.ppl_tokens} tokens, chunks of 128",
           "zero_shot": f"7 tasks, first {ns.limit} examples each, average as in pipsteps.zeroshot",
           "calibration": {k: cal[k] for k in ("source", "n_samples", "seq_len")}, "perturbation": pert,
           "wall_s_per_seed": walls,
           "cpu_cores": os.cpu_count(), "variants": table}
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(out, indent=1))
    for k, v in table.items():
        ppl, zs = v["ppl128"], v["zs_avg"]
        zs_s = f"{zs['mean']:.1f} ({zs['min']:.1f}..{zs['max']:.1f})" if zs else "-"
        print(f"{k:40s} ppl128 {ppl['mean']:9.1f} ({ppl['min']:.1f}..{ppl['max']:.1f}, n={ppl['n']})  zs {zs_s}")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
