"""Step: one pruning round. Score the structures, remove the lowest-scoring unprotected ones, save the model.

Depth (whole decoder layers, pipsteps.scores): `pip` / `pip_oneshot` (a perturbation score, default `norm_diff` =
PertImport ‖G_clean − G_pert‖₂), `taylor`, `magnitude`, `random` (seeded per round) and `block_influence`
(ShortGPT, read from pipsteps.block_influence). The round reads how many layers to remove from the plan.

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

from pipsteps import cli
from pipsteps.io import PipError, Timer, count_params, load_model, load_tokenizer, read_json, write_json
from pipsteps.plan import base_method
from pipsteps.scores import NEEDS, depth_scores, layer_stats
from pipsteps.surgery import decoder_layers, read_manifest, remove_layers, save_pruned
from pipsteps.width import prune_width, select_global, select_local
from pipsteps.width_scores import NEEDS as WIDTH_NEEDS
from pipsteps.width_scores import width_scores

log = logging.getLogger("pipsteps.prune")
METHODS = ("pip", "pip_oneshot", "taylor", "magnitude", "random", "block_influence")


@dataclass(frozen=True)
class PruneConfig:
    round: int = field(default=1, metadata={"help": "round number (1-based)"})
    method: str = field(default="pip", metadata={"help": f"{', '.join(METHODS)}, or random_sN (seed N)"})
    score: str = field(default="norm_diff", metadata={"help": "PIP score (pipsteps.scores / pipsteps.width_scores)"})
    seed: int = field(default=0, metadata={"help": "seed (random method; random_sN uses N)"})


def score_name(cfg: PruneConfig) -> str:
    method, _ = base_method(cfg.method)
    return cfg.score if method in ("pip", "pip_oneshot") else method


def seed_of(cfg: PruneConfig) -> int:
    seed = base_method(cfg.method)[1]
    return cfg.seed if seed is None else seed


def choose(scores: list[float] | None, candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """The k candidates with the lowest score (ties: lower index first), or k random ones without scores."""
    if scores is None:
        return sorted(rng.sample(candidates, k))
    return sorted(sorted(candidates, key=lambda i: (scores[i], i))[:k])


def _views(name: str, needs: dict, clean: Path | None, perturbed: Path | None) -> tuple[Path | None, Path | None]:
    if name not in needs:
        raise PipError(f"unknown score {name!r}; allowed: {', '.join(needs)}")
    missing = [v for v, p in (("clean", clean), ("perturbed", perturbed)) if v in needs[name] and p is None]
    if missing:
        raise PipError(f"score {name!r} needs the {' and '.join(missing)} gradient file(s)")
    return (clean if "clean" in needs[name] else None), (perturbed if "perturbed" in needs[name] else None)


def depth_round(cfg: PruneConfig, model, manifest: dict, plan: dict, name: str, clean: Path | None,
                perturbed: Path | None, influence: Path | None) -> dict[str, Any]:
    """Remove the round's lowest-scoring layers in place; returns the round record's layer fields."""
    n = len(decoder_layers(model))
    k = plan["per_round"][cfg.round - 1]
    candidates = list(range(plan["protect_first"], n - plan["protect_last"]))
    scores = None
    if name == "block_influence":
        if influence is None:
            raise PipError("method 'block_influence' needs the block influence JSON (--influence)")
        scores = read_json(influence)["scores"]
        if len(scores) != n:
            raise PipError(f"{influence} scores {len(scores)} layers, the model has {n}: it was computed on another "
                           "model (block influence is one-shot, from the dense model)")
    elif name != "random":
        c, p = _views(name, NEEDS, clean, perturbed)
        scores = depth_scores(name, layer_stats(model, c, p))
    remove = choose(scores, candidates, k, random.Random(f"{seed_of(cfg)}:{cfg.round}"))
    orig = manifest["kept_layers"]
    removed_orig = [orig[i] for i in remove]
    remove_layers(model, remove)
    manifest.update(kept_layers=[i for i in orig if i not in removed_orig],
                    removed_layers=manifest["removed_layers"] + removed_orig)
    manifest["rounds"] = manifest["rounds"] + [
        {"round": cfg.round, "removed": removed_orig,
         "scores": {str(orig[i]): s for i, s in enumerate(scores)} if scores else None}]
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


def width_round(cfg: PruneConfig, model, manifest: dict, plan: dict, name: str, clean: Path | None,
                perturbed: Path | None) -> dict[str, Any]:
    """Remove the round's lowest-scoring KV groups and MLP channels in place; returns the round record's fields."""
    r = cfg.round - 1
    c, p = _views(name, WIDTH_NEEDS, clean, perturbed)
    ws = width_scores(model, name, c, p, seed=seed_of(cfg) * 100_003 + cfg.round)
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


def run(cfg: PruneConfig, model_dir: Path, plan: dict[str, Any], out: Path, clean: Path | None = None,
        perturbed: Path | None = None, calibration_hash: str = "", influence: Path | None = None) -> dict[str, Any]:
    method, _ = base_method(cfg.method)
    if not 1 <= cfg.round <= plan["rounds"]:
        raise PipError(f"round {cfg.round} is outside the plan's 1..{plan['rounds']}")
    unit = plan.get("unit", "depth")
    if unit == "width" and method == "block_influence":
        raise PipError("method 'block_influence' prunes whole layers only (unit depth)")
    name = score_name(cfg)
    with Timer() as t:
        model = load_model(model_dir, device="cpu")
        manifest = read_manifest(model_dir)
        before = count_params(model)
        if unit == "width":
            fields = width_round(cfg, model, manifest, plan, name, clean, perturbed)
        else:
            fields = depth_round(cfg, model, manifest, plan, name, clean, perturbed, influence)
        after = count_params(model)
        manifest.update(unit=unit, method=cfg.method, score=name, target_ratio=plan["target_ratio"],
                        seed=seed_of(cfg), calibration_hash=calibration_hash)
        save_pruned(model, load_tokenizer(model_dir), out, manifest)
    ratio = 1.0 - after["total"] / plan["params_total"]
    log.info("round %d (%s): %d → %d params, achieved ratio %.4f (target %s)", cfg.round, cfg.method,
             before["total"], after["total"], ratio, plan["target_ratio"])
    views = list((WIDTH_NEEDS if unit == "width" else NEEDS).get(name, ()))  # the gradient files the scores read
    return {"round": cfg.round, "unit": unit, "method": cfg.method, "score": name, "seed": seed_of(cfg),
            "views": views, **fields,
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
        p.add_argument("--influence", type=Path, default=None, help="block influence JSON (block_influence)")
        p.add_argument("--calibration", type=Path, default=None, help="calibration metrics JSON (for its hash)")
        p.add_argument("--out", required=True, type=Path, help="output pruned model directory")
        p.add_argument("--metrics", required=True, type=Path, help="output round JSON")

    cfg, ns = cli.parse(PruneConfig, argv, __doc__.splitlines()[0], extra)
    calib_hash = read_json(ns.calibration)["calibration_hash"] if ns.calibration else ""
    metrics = run(cfg, ns.model, read_json(ns.plan), ns.out, ns.clean, ns.perturbed, calib_hash, ns.influence)
    write_json(ns.metrics, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
