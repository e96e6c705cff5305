"""Step: one depth-pruning round. Score every decoder layer, remove the lowest-scoring unprotected layer(s).

Methods: `pip` (a perturbation score from pipsteps.scores, default `norm_diff` = PertImport ‖G_clean − G_pert‖₂),
`taylor`, `magnitude` and `random` (seeded per round). The round reads how many layers to remove from the plan,
writes the pruned model (safetensors + stock config + pruning_manifest.json, loadable by plain
`AutoModelForCausalLM.from_pretrained`) and a round JSON with every layer's score, the removed layer(s) with their
original indices, parameter counts and the achieved ratio.
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
from pipsteps.scores import NEEDS, depth_scores, layer_stats
from pipsteps.surgery import decoder_layers, read_manifest, remove_layers, save_pruned

log = logging.getLogger("pipsteps.prune")
METHODS = ("pip", "taylor", "magnitude", "random")


@dataclass(frozen=True)
class PruneConfig:
    round: int = field(default=1, metadata={"help": "round number (1-based)"})
    method: str = field(default="pip", metadata={"help": "pip, taylor, magnitude or random"})
    score: str = field(default="norm_diff", metadata={"help": "PIP score (see pipsteps.scores)"})
    seed: int = field(default=0, metadata={"help": "seed (random method)"})


def score_name(cfg: PruneConfig) -> str:
    return {"pip": cfg.score, "taylor": "taylor", "magnitude": "magnitude", "random": "random"}[cfg.method]


def choose(scores: list[float] | None, candidates: list[int], k: int, rng: random.Random) -> list[int]:
    """The k candidates with the lowest score (ties: lower index first), or k random ones without scores."""
    if scores is None:
        return sorted(rng.sample(candidates, k))
    return sorted(sorted(candidates, key=lambda i: (scores[i], i))[:k])


def run(cfg: PruneConfig, model_dir: Path, plan: dict[str, Any], out: Path, clean: Path | None = None,
        perturbed: Path | None = None, calibration_hash: str = "") -> dict[str, Any]:
    if cfg.method not in METHODS:
        raise PipError(f"unknown method {cfg.method!r}; allowed: {', '.join(METHODS)}")
    if not 1 <= cfg.round <= plan["rounds"]:
        raise PipError(f"round {cfg.round} is outside the plan's 1..{plan['rounds']}")
    k = plan["per_round"][cfg.round - 1]
    with Timer() as t:
        model = load_model(model_dir, device="cpu")
        manifest = read_manifest(model_dir)
        n = len(decoder_layers(model))
        candidates = list(range(plan["protect_first"], n - plan["protect_last"]))
        name = score_name(cfg)
        scores = None
        if name != "random":
            need = NEEDS[name]
            missing = [v for v, p in (("clean", clean), ("perturbed", perturbed)) if v in need and p is None]
            if missing:
                raise PipError(f"score {name!r} needs the {' and '.join(missing)} gradient file(s)")
            scores = depth_scores(name, layer_stats(model, clean if "clean" in need else None,
                                                    perturbed if "perturbed" in need else None))
        remove = choose(scores, candidates, k, random.Random(f"{cfg.seed}:{cfg.round}"))
        orig = manifest["kept_layers"]
        removed_orig = [orig[i] for i in remove]
        before = count_params(model)
        remove_layers(model, remove)
        after = count_params(model)
        manifest.update(unit="depth", method=cfg.method, score=name, target_ratio=plan["target_ratio"],
                        seed=cfg.seed, calibration_hash=calibration_hash,
                        kept_layers=[i for i in orig if i not in removed_orig],
                        removed_layers=manifest["removed_layers"] + removed_orig)
        manifest["rounds"] = manifest["rounds"] + [
            {"round": cfg.round, "removed": removed_orig,
             "scores": {str(orig[i]): s for i, s in enumerate(scores)} if scores else None}]
        save_pruned(model, load_tokenizer(model_dir), out, manifest)
    ratio = 1.0 - after["total"] / plan["params_total"]
    log.info("round %d (%s/%s): removed layer(s) %s (original index), %d layers left, achieved ratio %.4f",
             cfg.round, cfg.method, name, removed_orig, n - k, ratio)
    return {"round": cfg.round, "method": cfg.method, "score": name,
            "layer_scores": [{"index": i, "orig_index": orig[i], "score": scores[i] if scores else None}
                             for i in range(n)],
            "removed": [{"index": i, "orig_index": o} for i, o in zip(remove, removed_orig)],
            "removed_layers_so_far": manifest["removed_layers"], "layers_left": n - k,
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
        p.add_argument("--calibration", type=Path, default=None, help="calibration metrics JSON (for its hash)")
        p.add_argument("--out", required=True, type=Path, help="output pruned model directory")
        p.add_argument("--metrics", required=True, type=Path, help="output round JSON")

    cfg, ns = cli.parse(PruneConfig, argv, __doc__.splitlines()[0], extra)
    calib_hash = read_json(ns.calibration)["calibration_hash"] if ns.calibration else ""
    metrics = run(cfg, ns.model, read_json(ns.plan), ns.out, ns.clean, ns.perturbed, calib_hash)
    write_json(ns.metrics, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
