"""Run the method-comparison protocol cell by cell as real workflow runs, writing one result JSON per cell.

    python bench/compare.py bench/protocol.yaml [--workdir /tmp/pip-compare] [--cells 'width-r0.2-*']
        [--max-cells N] [--cores 2] [--dry-run] [--refresh-calibration] [--results bench/results]

First the dense model is prepared and evaluated once (PPL and zero-shot: they do not depend on calibration). Then
every cell (block × seed × domain, bench/protocol.py) runs in three workflow calls in the work directory of its
domain and seed: (1) every method's pruning and PPL, (2) zero-shot for the best PIP variant and the best baseline
of the cell by the primary PPL, (3) for blocks with `recovery: true`, LoRA recovery of those two and their PPL.
A finished cell's JSON (bench/results/<protocol name>/<cell>.json, with the spec hash of the cell) is never
recomputed; a killed run continues where it stopped: finished cells are skipped, and inside a cell the workflow's
cache keeps every finished job. `--refresh-calibration` rewrites the calibration records of finished cells (e.g.
the `llm` view's acceptance counts) from their work directories, refusing any whose hash or edit rate differs from
the committed one. Tables: bench/results_doc.py.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from cell_records import VIEW_IDENTITY, calibration_record, ppl, provenance, read_json, write_result, zero_shot
from protocol import REPO, Cell, Protocol, ProtocolError, is_pip, load, split

from pipsteps import layout as L  # noqa: E402  (torch-free; protocol put this checkout first on sys.path)

CALIBRATION = f"{L.RESULTS}/calibration/calibration.json"


def wildcard(method: str, seed: int) -> str:
    """The workflow's method wildcard: the random baseline carries the cell's seed (random_sN)."""
    return f"random_s{seed}" if method == "random" else method


def stage(cell: Cell, method: str) -> str:
    """The workflow stage of a protocol method (its view, `@name`, only picks the work directory)."""
    return L.variant(cell.unit, wildcard(split(method)[0], cell.seed), cell.ratio)


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for k in parents:
        cfg = cfg.setdefault(k, {})
    cfg[leaf] = value


def workflow_config(proto: Protocol, cell: Cell | None, model_source: str, view: str | None = None
                    ) -> dict[str, Any]:
    """The workflow config of one cell's view (or of the dense run, cell None): config.yaml plus the protocol's
    keys, then the view's."""
    raw = proto.raw
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["experiment"] = f"{proto.workspace}-{cell.workdir_of(view) if cell else 'dense'}"
    cfg["model"]["source"] = model_source
    domain = raw["domains"][cell.domain if cell else next(iter(raw["domains"]))]
    cfg["calibration"] = {**{k: (proto.expand(v) if k == "source" else v) for k, v in domain.items()},
                          **raw["calibration"], "seed": cell.seed if cell else 0}
    ppl, zs = raw["eval"]["ppl"], raw["eval"].get("zero_shot") or {}
    cfg["eval"] = {
        "datasets": [{"name": n, **{k: (proto.expand(v) if k == "source" else v) for k, v in d.items()}}
                     for n, d in ppl["datasets"].items()],
        "seq_lens": [ppl["seq_len"]], "max_tokens": ppl["max_tokens"], "efficiency": {"enabled": False},
        "tasks": {"enabled": bool(zs), "data_dir": str(proto.data_dir), "limit": zs.get("limit"),
                  **({"names": zs["tasks"]} if zs.get("tasks") else {})}}
    cfg["mlflow"] = {"enabled": False}
    if cell:
        names = [split(m)[0] for m in cell.groups()[view]]
        cfg["prune"].update(seed=cell.seed, grid={"units": [cell.unit], "methods": names,
                                                  "ratios": [cell.ratio], "seeds": [cell.seed]})
        if cell.recovery:
            rec = raw["recovery"]
            cfg["recovery"] = {"enabled": True, **{k: (proto.expand(v) if k == "source" else v)
                                                   for k, v in rec.items()}}
    for key, value in {**(raw.get("settings") or {}), **((raw.get("views") or {}).get(view) or {})}.items():
        set_key(cfg, key, value)
    return cfg


def snakemake_cmd(cores: int, targets: list[str], dry: bool = False) -> list[str]:
    """Explicit flags, no workflow profile: the protocol runs the same wherever the profiles live."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml",
            "--workflow-profile", "none", "--cores", str(cores), "--rerun-incomplete", *targets,
            *(["-n", "--quiet", "rules"] if dry else [])]


def run_workflow(workdir: Path, cfg: dict, targets: list[str], cores: int, tag: str, dry: bool = False) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = snakemake_cmd(cores, targets, dry)
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    (workdir / f"snakemake_{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"{workdir.name} {tag}: snakemake failed (exit {proc.returncode}); see "
                 f"{workdir / f'snakemake_{tag}.log'}:\n{proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


def variant_figures(wd: Path, cell: Cell, method: str) -> dict[str, Any]:
    results, var = wd / L.RESULTS, stage(cell, method)
    rounds = L.rounds(results, var, read_json)
    last = rounds[-1]
    rec = results / L.evaluation(L.recovered(var))
    return {"ppl": ppl(results / L.evaluation(var)), "params": last["params_after"],
            "achieved_ratio": last["achieved_ratio"], "score": last.get("score"), "rounds": len(rounds),
            "removed_layers": last.get("removed_layers_so_far") if cell.unit == "depth" else None,
            "zero_shot": zero_shot(results / L.evaluation(var, "tasks")),
            "recovered_ppl": ppl(rec) if rec.exists() else None}


def run_dense(proto: Protocol, root: Path, out: Path, cores: int) -> str:
    """Prepare and evaluate the dense model once; returns the prepared model directory every cell starts from."""
    wd = root / "dense"
    model_dir = str((wd / "results/base/model").resolve())
    done = out / "dense.json"
    if done.exists() and (wd / "results/base/model").is_dir():
        return model_dir
    cfg = workflow_config(proto, None, proto.raw["model"])
    t = time.perf_counter()
    if done.exists():  # the figures are committed; only the model directory is missing (a new work directory)
        run_workflow(wd, cfg, ["results/base/model"], cores, "dense")
        print(f"dense model: prepared in {time.perf_counter() - t:.1f} s (figures from {done.name})", flush=True)
        return model_dir
    targets = ["results/base/eval/metrics.json"]
    if cfg["eval"]["tasks"]["enabled"]:
        targets.append("results/base/eval/tasks.json")
    run_workflow(wd, cfg, targets, cores, "dense")
    wall = round(time.perf_counter() - t, 1)
    write_result(done, {"protocol": proto.name, "config": cfg, **provenance(), "wall_s": wall,
                        "ppl": ppl(wd / "results/base/eval/metrics.json"),
                        "zero_shot": zero_shot(wd / "results/base/eval/tasks.json")})
    print(f"dense model: prepared and evaluated in {wall} s", flush=True)
    return model_dir


def best(figs: dict[str, dict], primary: str, pip: bool) -> str | None:
    names = [m for m in figs if is_pip(m) == pip]
    return min(names, key=lambda m: figs[m]["ppl"][primary]) if names else None


def run_cell(proto: Protocol, cell: Cell, root: Path, model_dir: str, cores: int) -> dict[str, Any]:
    primary = proto.raw["eval"]["primary"]
    groups = cell.groups()
    cfgs = {v: workflow_config(proto, cell, model_dir, v) for v in groups}
    home = {m: (v, root / cell.workdir_of(v)) for v, ms in groups.items() for m in ms}

    def phase(name: str, methods: list[str], target: Callable[[str], str]) -> None:
        t = time.perf_counter()
        for v in dict.fromkeys(home[m][0] for m in methods):
            tag = cell.name + (f"-{v}" if v else "") + ("" if name == "prune_ppl" else f"-{name}")
            run_workflow(root / cell.workdir_of(v), cfgs[v],
                         [f"{L.RESULTS}/{target(stage(cell, m))}" for m in methods if home[m][0] == v], cores, tag)
        walls[name] = round(time.perf_counter() - t, 1)

    walls: dict[str, float] = {}
    phase("prune_ppl", list(cell.methods), L.evaluation)
    figs = {m: variant_figures(home[m][1], cell, m) for m in cell.methods}
    chosen = [m for m in (best(figs, primary, True), best(figs, primary, False)) if m]
    if proto.raw["eval"].get("zero_shot"):
        phase("zero_shot", chosen, lambda s: L.evaluation(s, "tasks"))
    if cell.recovery:
        phase("recovery", chosen, lambda s: L.evaluation(L.recovered(s)))
    calib = {v or "default": calibration_record(read_json(root / cell.workdir_of(v) / CALIBRATION)) for v in groups}
    return {"protocol": proto.name, "cell": {"unit": cell.unit, "ratio": cell.ratio, "domain": cell.domain,
                                             "seed": cell.seed},
            "spec_hash": proto.spec_hash(cell), "config": cfgs[next(iter(groups))], **provenance(),
            "view_configs": {v: cfgs[v] for v in groups if v},
            "calibration": calib,
            "wall_s": walls, "best_pip": chosen[0] if chosen and is_pip(chosen[0]) else None,
            "best_baseline": next((m for m in chosen if not is_pip(m)), None),
            "variants": {m: variant_figures(home[m][1], cell, m) for m in cell.methods}}


def refresh_calibration(proto: Protocol, cells: list[Cell], root: Path, out: Path, cores: int) -> None:
    """Rewrite the calibration records of finished cells from their work directories, e.g. after the record gained
    a field: the workflow rebuilds a missing calibration step, and a record whose hash or edit rate differs from the
    committed one is refused (another view than the one the cell ran on), the result left as it was."""
    model_dir = run_dense(proto, root, out, cores)
    for cell in (c for c in cells if status(out, proto, c) == "done"):
        path = out / f"{cell.name}.json"
        result = read_json(path)
        calib = {}
        for v in cell.groups():
            wd = root / cell.workdir_of(v)
            run_workflow(wd, workflow_config(proto, cell, model_dir, v), [CALIBRATION], cores, f"{cell.name}-calib")
            rec, old = calibration_record(read_json(wd / CALIBRATION)), result["calibration"][v or "default"]
            if differ := [k for k in VIEW_IDENTITY if rec.get(k) != old.get(k)]:
                sys.exit(f"{cell.name}: the calibration in {wd} is not the one the cell ran on ({', '.join(differ)} "
                         f"differ): {path} left as it was")
            calib[v or "default"] = rec
        changed = calib != result["calibration"]
        print(f"{cell.name}: calibration record " + ("updated" if changed else "unchanged"))
        if changed:
            write_result(path, {**result, "calibration": calib})


def status(out: Path, proto: Protocol, cell: Cell) -> str:
    path = out / f"{cell.name}.json"
    if not path.exists():
        return "todo"
    return "done" if read_json(path).get("spec_hash") == proto.spec_hash(cell) else "stale"


def dry_run(proto: Protocol, cells: list[Cell], root: Path, out: Path, cores: int) -> None:
    """List every cell, its status and the workflow runs it would make, with Snakemake's own dry-run job counts."""
    dense = root / "dense" / "results/base/model"
    source = str(dense.resolve()) if dense.is_dir() else proto.raw["model"]
    print(f"dense run: {root / 'dense'} (model {proto.raw['model']})")
    for i, cell in enumerate(cells, 1):
        st = status(out, proto, cell)
        print(f"[{i}/{len(cells)}] {cell.name}: {st}; workdir {root / cell.workdir}")
        if st == "done":
            continue
        for view, ms in cell.groups().items():
            targets = [f"results/{stage(cell, m)}/eval/metrics.json" for m in ms]
            print(f"  run in {cell.workdir_of(view)}: {shlex.join(snakemake_cmd(cores, targets))}")
            jobs = run_workflow(root / cell.workdir_of(view), workflow_config(proto, cell, source, view), targets,
                                cores, f"{cell.name}-dry", dry=True)
            print("  " + "\n  ".join(line for line in jobs.splitlines() if line.strip()))
        print(f"  then: zero-shot of the best PIP variant and the best baseline"
              f"{' and their LoRA recovery' if cell.recovery else ''}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", type=Path)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pip-compare"),
                   help="work directories (one per domain and seed, kept: the workflow's cache)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results",
                   help="committed result JSONs go to RESULTS/<protocol name>/")
    p.add_argument("--cells", nargs="*", default=["*"], help="only cells whose name matches a pattern")
    p.add_argument("--max-cells", type=int, default=0, help="stop after running N cells (0: all)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dry-run", action="store_true", help="list cells and their workflow jobs; run nothing")
    p.add_argument("--refresh-calibration", action="store_true",
                   help="rewrite the finished cells' calibration records from their work directories; nothing else")
    ns = p.parse_args()
    try:
        proto = load(ns.protocol)
    except ProtocolError as e:
        sys.exit(f"protocol error: {e}")
    root = ns.workdir.resolve() / proto.workspace
    out = ns.results.resolve() / proto.name
    cells = [c for c in proto.cells() if any(fnmatch.fnmatch(c.name, pat) for pat in ns.cells)]
    if ns.dry_run:
        return dry_run(proto, cells, root, out, ns.cores)
    if ns.refresh_calibration:
        return refresh_calibration(proto, cells, root, out, ns.cores)
    todo = [c for c in cells if status(out, proto, c) != "done"]
    print(f"protocol {proto.name}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run", flush=True)
    if not todo:
        return
    model_dir = run_dense(proto, root, out, ns.cores)
    times: list[float] = []
    for i, cell in enumerate(todo, 1):
        if ns.max_cells and len(times) >= ns.max_cells:
            break
        t = time.perf_counter()
        print(f"[{i}/{len(todo)}] {cell.name} ...", flush=True)
        result = run_cell(proto, cell, root, model_dir, ns.cores)
        write_result(out / f"{cell.name}.json", result)
        times.append(time.perf_counter() - t)
        left = len(todo) - i
        mean = sum(times) / len(times)
        print(f"[{i}/{len(todo)}] {cell.name}: {times[-1]:.0f} s (best PIP {result['best_pip']}, best baseline "
              f"{result['best_baseline']}); {left} left, ~{left * mean / 60:.0f} min at {mean:.0f} s/cell",
              flush=True)


if __name__ == "__main__":
    main()
