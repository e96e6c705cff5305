"""Step: one pruning round. Score the structures, remove the lowest-scoring unprotected ones, save the model.

Depth (whole decoder layers, pipsteps.scores): `pip` / `pip_oneshot` (a perturbation score: from the two gradient
files, default `norm_diff` = PertImport ‖G_clean − G_pert‖₂, or forward-only from the loss of the model with each
layer skipped, e.g. `pip_greedy`), `taylor`, `magnitude`, `random` (seeded per round), `block_influence` (ShortGPT,
one-shot, read from the block influence step's JSON), `block_influence_iter` (the same score recomputed on the current
model every round) and `sleb` (greedy: the layer whose removal raises the clean calibration loss least). The round
reads how many layers to remove from the plan.

Width (KV groups with their query heads and MLP channels, pipsteps.width / pipsteps.width_scores): `pip` /
`pip_oneshot` (default `taylor_diff` = Σ|W·(G_clean − G_pert)| per group), `taylor`, `magnitude`, `random`.
`local` ranking removes the plan's numbers of KV groups and channels, each type ranked on its own; `global`
ranks both types together by per-parameter score until the round's parameter budget is spent. Every layer keeps
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
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from pipsteps import cli, methods
from pipsteps.ablation import block_influence, skip_losses
from pipsteps.grads import GradConfig, load_for_grads, load_ids, write_view
from pipsteps.io import (DTYPES, PipError, Timer, atomic_outputs, count_params, read_json, resolve_device, set_threads,
                         write_json)
from pipsteps.scores import ablation_scores, depth_scores, layer_stats
from pipsteps.surgery import decoder_layers, load_model, load_tokenizer, read_manifest, remove_layers, save_pruned
from pipsteps.width import prune_width, select_global, select_local
from pipsteps.width_scores import width_scores

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


def choose(scores: list[float] | None, candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """The k candidates with the lowest score (ties: lower index first), or k random ones without scores."""
    if scores is None:
        return sorted(rng.sample(candidates, k))
    return sorted(sorted(candidates, key=lambda i: (scores[i], i))[:k])


def _grad_files(unit: str, cfg: PruneConfig, grads: dict[str, Path | None]) -> tuple[Path | None, Path | None]:
    """(first, second) gradient file a score reads: clean, and perturbed (control for noise_control, the psdiff
    statistic alone for fisher_ps)."""
    need = methods.needs(unit, cfg.method, cfg.score).grads
    missing = [v for v in need if grads.get(v) is None]
    if missing:
        raise PipError(f"{cfg.method} ({score_name(cfg)}) needs the {' and '.join(missing)} gradient file(s)")
    return (grads["clean"] if "clean" in need else None), next((grads[v] for v in need if v != "clean"), None)


def forward_scores(name: str, model, calib: dict[str, Path | None], views: tuple[str, ...], candidates: list[int],
                   cfg: PruneConfig) -> list[float | None]:
    """Forward-only depth scores on the current model, from the calibration `views` the score reads: block
    influence, or an ablation score (sleb, gap_…). The model goes to cfg.device and back to the CPU."""
    missing = [v for v in views if calib.get(v) is None]
    if missing:
        raise PipError(f"{cfg.method} ({name}) needs the {' and '.join(missing)} calibration view(s) (--calib-…)")
    model.to(resolve_device(cfg.device, require_gpu=cfg.require_gpu))
    try:
        if methods.SCORES[name].kind == "influence":
            return block_influence(model, load_ids(calib["clean"]), cfg.micro_batch)[0]
        full, skipped = {}, {}
        for v in views:
            full[v], skipped[v] = skip_losses(model, load_ids(calib[v]), candidates, cfg.micro_batch,
                                              desc=f"skip {v}")
        log.info("calibration loss %s; with each candidate layer skipped: %s", full, skipped)
        return ablation_scores(name, full, skipped, len(decoder_layers(model)))
    finally:
        model.to("cpu")


def depth_round(cfg: PruneConfig, model, manifest: dict, plan: dict, name: str, grads: dict[str, Path | None],
                calib: dict[str, Path | None], influence: Path | None) -> dict[str, Any]:
    """Remove the round's lowest-scoring layers in place; returns the round record's layer fields."""
    n = len(decoder_layers(model))
    k = plan["per_round"][cfg.round - 1]
    candidates = list(range(plan["protect_first"], n - plan["protect_last"]))
    scores = None
    need = methods.needs("depth", cfg.method, cfg.score)
    if need.influence:  # the dense model's block influence, computed once
        if influence is None:
            raise PipError("method 'block_influence' needs the block influence JSON (--influence)")
        scores = read_json(influence)["scores"]
        if len(scores) != n:
            raise PipError(f"{influence} scores {len(scores)} layers, the model has {n}: it was computed on another "
                           "model (block influence is one-shot, from the dense model)")
    elif need.calib:  # forward passes on the current model: ablation, or block influence every round
        scores = forward_scores(name, model, calib, need.calib, candidates, cfg)
    elif methods.SCORES[name].kind == "gradient":
        scores = depth_scores(name, layer_stats(model, *_grad_files("depth", cfg, grads)))
    remove = choose(scores, candidates, k, random.Random(f"{seed_of(cfg)}:{cfg.round}"))
    orig = manifest["kept_layers"]
    removed_orig = [orig[i] for i in remove]
    remove_layers(model, remove)
    manifest.update(kept_layers=[i for i in orig if i not in removed_orig],
                    removed_layers=manifest["removed_layers"] + removed_orig)
    manifest["rounds"] = manifest["rounds"] + [
        {"round": cfg.round, "removed": removed_orig,
         "scores": {str(orig[i]): s for i, s in enumerate(scores) if s is not None} if scores else None}]
    log.info("round %d (%s/%s): removed layer(s) %s (original index), %d layers left", cfg.round, cfg.method, name,
             removed_orig, n - k)
    return {"layer_scores": [{"index": i, "orig_index": orig[i], "score": scores[i] if scores else None}
                             for i in range(n)],
            "removed": [{"index": i, "orig_index": o} for i, o in zip(remove, removed_orig)],
            "removed_layers_so_far": manifest["removed_layers"], "layers_left": n - k}


def kept_width(manifest: dict) -> list[dict[str, int]]:
    """Per kept layer: original index and the numbers of kept query heads, KV heads and MLP channels."""
    return [{"orig_index": o, "heads": len(e["kept_heads"]), "kv_heads": len(e["kept_kv_heads"]),
             "channels": len(e["kept_channels"])} for o, e in zip(manifest["kept_layers"], manifest["width"]["layers"])]


def width_round(cfg: PruneConfig, model, manifest: dict, plan: dict, name: str, grads: dict[str, Path | None]
                ) -> dict[str, Any]:
    """Remove the round's lowest-scoring KV groups and MLP channels in place; returns the round record's fields."""
    r = cfg.round - 1
    ws = width_scores(model, name, *_grad_files("width", cfg, grads), seed=seed_of(cfg) * 100_003 + cfg.round)
    candidates = plan["candidates"]
    if plan["ranking"] == "global":
        remove_kv, remove_ch = select_global(ws.values("attn", normalise=True), ws.values("mlp", normalise=True),
                                             ws.attn_size, ws.mlp_size, plan["params_per_round"][r], candidates)
    else:
        remove_kv = select_local(ws.values("attn"), plan["kv_groups_per_round"][r], candidates)
        remove_ch = select_local(ws.values("mlp"), plan["channels_per_round"][r], candidates)
    removed = prune_width(model, manifest, remove_kv, remove_ch)
    manifest["rounds"] = manifest["rounds"] + [{"round": cfg.round, "removed_width": removed}]
    log.info("round %d (%s/%s, %s): removed %d KV groups in %d layers and %d MLP channels in %d layers", cfg.round,
             cfg.method, name, plan["ranking"], sum(map(len, remove_kv.values())), len(remove_kv),
             sum(map(len, remove_ch.values())), len(remove_ch))
    orig = manifest["kept_layers"]
    return {"layer_scores": [{"index": i, "orig_index": o, "score": None} for i, o in enumerate(orig)],
            "group_scores": {"attn": ws.values("attn"), "mlp": ws.values("mlp")},
            "removed": [], "removed_groups": removed, "kept": kept_width(manifest),
            "removed_layers_so_far": manifest["removed_layers"], "layers_left": len(orig)}


def _prune(cfg: PruneConfig, model, model_dir: Path, plan: dict[str, Any], unit: str, name: str,
           grads: dict[str, Path | None], calib: dict[str, Path | None], influence: Path | None,
           calibration_hash: str, out: Path) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """Score and remove in place, then save the pruned model; returns (round fields, params before, params
    after)."""
    manifest = read_manifest(model_dir)
    before = count_params(model)
    if unit == "width":
        fields = width_round(cfg, model, manifest, plan, name, grads)
    else:
        fields = depth_round(cfg, model, manifest, plan, name, grads, calib, influence)
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
            fields, before, after = _prune(cfg, model, model_dir, plan, unit, name, grads, calib, influence,
                                                     calibration_hash, out)
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
