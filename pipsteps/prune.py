"""Step: one pruning round. Score the structures, remove the lowest-scoring unprotected ones, save the model.

Depth (whole decoder layers, pipsteps.scores): `pip` / `pip_oneshot` (a perturbation score: from the two gradient
files, default `norm_diff` = PertImport ‖G_clean − G_pert‖₂, or forward-only from the loss of the model with each
layer skipped, e.g. `pip_greedy`), `taylor`, `magnitude`, `random` (seeded per round), `block_influence` (ShortGPT,
one-shot, read from pipsteps.block_influence), `block_influence_iter` (the same score recomputed on the current
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
"""

from __future__ import annotations

import argparse
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from pipsteps import cli, methods
from pipsteps.ablation import skip_losses
from pipsteps.block_influence import block_influence
from pipsteps.gradients import load_ids
from pipsteps.io import (PipError, Timer, atomic_outputs, count_params, load_model, load_tokenizer, read_json,
                         resolve_device, set_threads, write_json)
from pipsteps.plan import base_method
from pipsteps.scores import ablation_scores, depth_scores, layer_stats
from pipsteps.surgery import decoder_layers, read_manifest, remove_layers, save_pruned
from pipsteps.width import prune_width, select_global, select_local
from pipsteps.width_scores import width_scores

log = logging.getLogger("pipsteps.prune")
METHODS = methods.METHODS


@dataclass(frozen=True)
class PruneConfig:
    round: int = field(default=1, metadata={"help": "round number (1-based)"})
    method: str = field(default="pip", metadata={"help": f"{', '.join(METHODS)}, random_sN (seed N) or pip-SCORE"})
    score: str = field(default="norm_diff", metadata={"help": "PIP score (pipsteps.scores / pipsteps.width_scores)"})
    seed: int = field(default=0, metadata={"help": "seed (random method; random_sN uses N)"})
    device: str = field(default="cpu", metadata={"help": "device of the forward-only scores (sleb, "
                                                         "block_influence_iter, ablation scores): cpu, cuda, auto"})
    micro_batch: int = field(default=4, metadata={"help": "samples per forward pass (forward-only scores)"})
    require_gpu: bool = field(default=False, metadata={"help": "forward-only scores: fail instead of falling back "
                                                                 "to the CPU (compute.require_gpu)"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: torch default)"})


def score_name(cfg: PruneConfig) -> str:
    method, explicit, _ = methods.parse(cfg.method)
    return (explicit or cfg.score) if method in methods.PIP_METHODS else method


def seed_of(cfg: PruneConfig) -> int:
    seed = base_method(cfg.method)[1]
    return cfg.seed if seed is None else seed


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
        if name == "block_influence_iter":
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
    if need.influence:
        if influence is None:
            raise PipError("method 'block_influence' needs the block influence JSON (--influence)")
        scores = read_json(influence)["scores"]
        if len(scores) != n:
            raise PipError(f"{influence} scores {len(scores)} layers, the model has {n}: it was computed on another "
                           "model (block influence is one-shot, from the dense model)")
    elif need.calib:
        scores = forward_scores(name, model, calib, need.calib, candidates, cfg)
    elif name != "random":
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


def run(cfg: PruneConfig, model_dir: Path, plan: dict[str, Any], out: Path,
        grads: dict[str, Path | None] | None = None, calibration_hash: str = "", influence: Path | None = None,
        calib: dict[str, Path | None] | None = None) -> dict[str, Any]:
    """`grads`: {view: gradient file} (clean, perturbed, control, psdiff); `calib`: {view: calibration ids} for the
    forward-only scores; `influence`: the dense model's block influence JSON."""
    grads, calib = grads or {}, calib or {}
    if not 1 <= cfg.round <= plan["rounds"]:
        raise PipError(f"round {cfg.round} is outside the plan's 1..{plan['rounds']}")
    unit = plan.get("unit", "depth")
    try:
        need = methods.needs(unit, cfg.method, cfg.score)
    except methods.MethodError as e:
        raise PipError(str(e)) from None
    name = score_name(cfg)
    if need.calib and cfg.require_gpu:  # a forward-only score: fail on a missing GPU before loading the model
        resolve_device(cfg.device, require_gpu=True)
    set_threads(cfg.threads)
    with Timer() as t, torch.no_grad():
        model = load_model(model_dir, device="cpu")
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
    ratio = 1.0 - after["total"] / plan["params_total"]
    log.info("round %d (%s): %d → %d params, achieved ratio %.4f (target %s)", cfg.round, cfg.method,
             before["total"], after["total"], ratio, plan["target_ratio"])
    return {"round": cfg.round, "unit": unit, "method": cfg.method, "score": name, "seed": seed_of(cfg),
            "views": list(need.grads), "calib_views": list(need.calib), **fields,
            "params_before": before["total"], "params_after": after["total"],
            "params_non_embedding_after": after["non_embedding"], "params_dense": plan["params_total"],
            "achieved_ratio": ratio, "target_ratio": plan["target_ratio"], "wall_s": t.seconds,
            "peak_mem_mb": t.peak_mem_mb}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory before this round")
        p.add_argument("--plan", required=True, type=Path, help="plan JSON (pipsteps.plan)")
        p.add_argument("--clean", type=Path, default=None, help="clean-view gradients")
        p.add_argument("--perturbed", type=Path, default=None, help="perturbed-view gradients")
        p.add_argument("--control", type=Path, default=None, help="control-view gradients (noise_control)")
        p.add_argument("--psdiff", type=Path, default=None, help="per-sample squared gradient difference (fisher_ps)")
        p.add_argument("--calib-clean", type=Path, default=None, help="clean calibration view (forward-only scores)")
        p.add_argument("--calib-perturbed", type=Path, default=None, help="perturbed calibration view (ablation)")
        p.add_argument("--influence", type=Path, default=None, help="block influence JSON (block_influence)")
        p.add_argument("--calibration", type=Path, default=None, help="calibration metrics JSON (for its hash)")
        p.add_argument("--out", required=True, type=Path, help="output pruned model directory")
        p.add_argument("--metrics", required=True, type=Path, help="output round JSON")

    cfg, ns = cli.parse(PruneConfig, argv, __doc__.splitlines()[0], extra)
    calib_hash = read_json(ns.calibration)["calibration_hash"] if ns.calibration else ""
    grads = {"clean": ns.clean, "perturbed": ns.perturbed, "control": ns.control, "psdiff": ns.psdiff}
    calib = {"clean": ns.calib_clean, "perturbed": ns.calib_perturbed}
    with atomic_outputs(ns.out, ns.metrics) as (out, metrics_out):  # the model and the round JSON, final together
        metrics = run(cfg, ns.model, read_json(ns.plan), out, grads, calib_hash, ns.influence, calib)
        write_json(metrics_out, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
