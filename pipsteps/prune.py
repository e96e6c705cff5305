"""Step: one pruning round. Score the structures, remove the lowest-scoring unprotected ones, save the model.

The unit's interface (pipsteps.units) does the work: `score` (the registry's formula of the method's score,
pipsteps.methods), `select` (the plan's budget for this round, lowest scores first, protected layers never) and
`apply` (the surgery, recorded in the manifest). Depth removes whole decoder layers (pipsteps.unit_depth); width
removes KV groups with their query heads and MLP channels (pipsteps.unit_width), `local` ranking each type on its
own, `global` both together by per-parameter score until the round's parameter budget is spent; every layer keeps
at least one KV group and one channel.

Writes the pruned model (safetensors + config + pruning_manifest.json, loadable by pipsteps.surgery.load_pruned)
and a round JSON: every score, the removed layers or groups with their original indices, the kept heads and
channels per layer (width), parameter counts, the achieved ratio, wall time and peak memory.

Round 1 reads the dense model's gradient files (one shared step). A later round of a gradient-based method takes
its own (`own_grads`): it loads the round r−1 model once, computes the views' gradients on it (pipsteps.gradients,
same numbers as the gradient step), scores, prunes and writes the round r model, all in one job. Its gradient files
live in a temporary directory, or in `--keep-grads DIR` (gradients.keep).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from pipsteps import cli, methods, units
from pipsteps.grads import GradConfig, load_for_grads, write_view
from pipsteps.errors import PipError
from pipsteps.files import atomic_outputs, read_json, write_json
from pipsteps.io import DTYPES, Timer, count_params, resolve_device, set_threads
from pipsteps.selection import RoundInputs
from pipsteps.surgery import load_model, load_tokenizer, read_manifest, save_pruned

log = logging.getLogger("pipsteps.prune")
METHODS = methods.METHODS


@dataclass(frozen=True)
class PruneConfig(GradConfig):
    """The compute fields (device, dtype, micro_batch, …) serve the round's own gradients and its forward-only
    scores (sleb, block_influence_iter, ablation scores); scoring and surgery run on the CPU."""

    method: str = field(default="pip", metadata={"help": f"{', '.join(METHODS)}, random_sN (seed N) or pip-SCORE"})
    score: str = field(default="norm_diff", metadata={"help": "PIP score (pipsteps.scores / pipsteps.width_scores)"})
    seed: int = field(default=0, metadata={"help": "seed (random method; random_sN uses N)"})
    own_grads: bool = field(default=False, metadata={"help": "take the gradients the method reads on this round's "
                                                             "model, from the calibration views (--calib-…)"})


def score_name(cfg: PruneConfig) -> str:
    return methods.score_of(cfg.method, cfg.score)


def seed_of(cfg: PruneConfig) -> int:
    seed = methods.parse(cfg.method)[2]
    return cfg.seed if seed is None else seed


def own_gradients(cfg: PruneConfig, model, views: tuple[str, ...], calib: dict[str, Path | None], tmp: Path
                  ) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """The gradient files of `views` on the loaded model, written to `tmp`, and their metrics."""
    files: dict[str, Path] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for v in views:
        src, paired = methods.GRAD_SOURCES[v]
        missing = [c for c in (src, paired) if c and calib.get(c) is None]
        if missing:
            raise PipError(f"round {cfg.round} of {cfg.method} takes its {v} gradients on the {' and '.join(missing)} "
                           "calibration view(s): pass --calib-…")
        files[v] = tmp / f"grads_{v}.safetensors"
        metrics[v] = write_view(model, calib[src], replace(cfg, view=v), files[v], calib[paired] if paired else None)
    return files, metrics


def reusable(model, model_dir: Path, cfg: PruneConfig) -> bool:
    """The gradient model can be pruned and saved as is: one device, in the dtype the model is stored in."""
    stored = read_json(model_dir / "config.json")
    dtype = stored.get("dtype") or stored.get("torch_dtype")
    return not cfg.device_map and DTYPES.get(dtype) == next(model.parameters()).dtype


def _prune(cfg: PruneConfig, model, model_dir: Path, plan: dict[str, Any], unit: str, name: str,
           inputs: RoundInputs, calibration_hash: str, out: Path
           ) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """Score, select and remove in place (the unit's interface, pipsteps.units), then save the pruned model;
    returns (round fields, params before, params after)."""
    u = units.get(unit)
    manifest = read_manifest(model_dir)
    before = count_params(model)
    scores = u.score(model, name, cfg, inputs, plan)
    removal = u.select(model, scores, plan, cfg.round)
    label = f"{cfg.method}/{name}" + (f", {plan['ranking']}" if unit == "width" else "")
    fields = u.apply(model, manifest, removal, scores, cfg.round, label)
    after = count_params(model)
    manifest.update(unit=unit, method=cfg.method, score=name, target_ratio=plan["target_ratio"],
                    seed=seed_of(cfg), calibration_hash=calibration_hash)
    save_pruned(model, load_tokenizer(model_dir), out, manifest)
    return fields, before, after


def run(cfg: PruneConfig, model_dir: Path, plan: dict[str, Any], out: Path,
        grads: dict[str, Path | None] | None = None, calibration_hash: str = "", influence: Path | None = None,
        calib: dict[str, Path | None] | None = None, keep_grads: Path | None = None) -> dict[str, Any]:
    """`grads`: {view: gradient file} (clean, perturbed, control, psdiff); `calib`: {view: calibration ids} for the
    forward-only scores and for `own_grads`; `influence`: the dense model's block influence JSON; `keep_grads`: a
    directory that receives the round's own gradient files."""
    grads, calib = dict(grads or {}), calib or {}
    if not 1 <= cfg.round <= plan["rounds"]:
        raise PipError(f"round {cfg.round} is outside the plan's 1..{plan['rounds']}")
    unit = plan.get("unit", "depth")
    try:
        need = methods.needs(unit, cfg.method, cfg.score)
    except methods.MethodError as e:
        raise PipError(str(e)) from None
    name = score_name(cfg)
    own = need.grads if cfg.own_grads else ()
    if (need.calib or own) and cfg.require_gpu:  # fail on a missing GPU before loading the model
        resolve_device(cfg.device, require_gpu=True)
    set_threads(cfg.threads)
    grad_metrics: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    with Timer() as t, tempfile.TemporaryDirectory(prefix=".grads-", dir=out.parent) as tmp:
        if own:
            model = load_for_grads(model_dir, cfg)
            files, grad_metrics = own_gradients(cfg, model, own, calib, Path(tmp))
            grads.update(files)
            if reusable(model, model_dir, cfg):
                model = model.to("cpu")
            else:  # sharded or in another dtype: prune the stored weights, loaded on the CPU
                del model
                model = load_model(model_dir, device="cpu")
        else:
            model = load_model(model_dir, device="cpu")
        with torch.no_grad():
            inputs = RoundInputs(grads=grads, calib=calib, influence=influence, seed=seed_of(cfg))
            fields, before, after = _prune(cfg, model, model_dir, plan, unit, name, inputs, calibration_hash, out)
        if keep_grads is not None:
            keep_grads.mkdir(parents=True, exist_ok=True)
            for f in files.values():
                shutil.move(f, keep_grads / f.name)
    ratio = 1.0 - after["total"] / plan["params_total"]
    log.info("round %d (%s): %d → %d params, achieved ratio %.4f (target %s)", cfg.round, cfg.method,
             before["total"], after["total"], ratio, plan["target_ratio"])
    return {"round": cfg.round, "unit": unit, "method": cfg.method, "score": name, "seed": seed_of(cfg),
            "views": list(need.grads), "calib_views": list(need.calib), **fields,
            "params_before": before["total"], "params_after": after["total"],
            "params_non_embedding_after": after["non_embedding"], "params_dense": plan["params_total"],
            "achieved_ratio": ratio, "target_ratio": plan["target_ratio"], "gradients": grad_metrics,
            "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory before this round")
        p.add_argument("--plan", required=True, type=Path, help="plan JSON (pipsteps.plan)")
        p.add_argument("--clean", type=Path, default=None, help="clean-view gradients")
        p.add_argument("--perturbed", type=Path, default=None, help="perturbed-view gradients")
        p.add_argument("--control", type=Path, default=None, help="control-view gradients (noise_control)")
        p.add_argument("--psdiff", type=Path, default=None, help="per-sample squared gradient difference (fisher_ps)")
        p.add_argument("--calib-clean", type=Path, default=None, help="clean calibration view (forward-only scores)")
        p.add_argument("--calib-perturbed", type=Path, default=None, help="perturbed calibration view")
        p.add_argument("--calib-control", type=Path, default=None, help="control calibration view (own_grads)")
        p.add_argument("--keep-grads", type=Path, default=None, help="keep the round's own gradient files here")
        p.add_argument("--influence", type=Path, default=None, help="block influence JSON (block_influence)")
        p.add_argument("--calibration", type=Path, default=None, help="calibration metrics JSON (for its hash)")
        p.add_argument("--out", required=True, type=Path, help="output pruned model directory")
        p.add_argument("--metrics", required=True, type=Path, help="output round JSON")

    cfg, ns = cli.parse(PruneConfig, argv, __doc__.splitlines()[0], extra)
    calib_hash = read_json(ns.calibration)["calibration_hash"] if ns.calibration else ""
    grads = {"clean": ns.clean, "perturbed": ns.perturbed, "control": ns.control, "psdiff": ns.psdiff}
    calib = {"clean": ns.calib_clean, "perturbed": ns.calib_perturbed, "control": ns.calib_control}
    with atomic_outputs(ns.out, ns.metrics) as (out, metrics_out):  # the model and the round JSON, final together
        metrics = run(cfg, ns.model, read_json(ns.plan), out, grads, calib_hash, ns.influence, calib, ns.keep_grads)
        write_json(metrics_out, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
