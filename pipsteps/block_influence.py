"""Step: ShortGPT block influence of every decoder layer of the dense model, forward only (the formula:
pipsteps.ablation.block_influence). Computed once (the `block_influence` method is one-shot) and cached in
results/base/block_influence.json.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipsteps import cli
from pipsteps.ablation import block_influence
from pipsteps.compute import ComputeConfig
from pipsteps.grads import load_ids
from pipsteps.files import write_json
from pipsteps.io import Timer, model_devices, resolve_device, resolve_dtype, set_threads
from pipsteps.surgery import load_model

log = logging.getLogger("pipsteps.block_influence")


@dataclass(frozen=True)
class InfluenceConfig(ComputeConfig):
    micro_batch: int = field(default=4, metadata={"help": "samples per forward pass"})


def run(cfg: InfluenceConfig, model_dir: Path, calib: Path) -> dict[str, Any]:
    set_threads(cfg.threads)
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    with Timer() as t:
        ids = load_ids(calib)
        model = load_model(model_dir, device, resolve_dtype(cfg.dtype, device), device_map=cfg.device_map)
        scores, n_tokens = block_influence(model, ids, cfg.micro_batch)
    log.info("block influence over %d tokens: %s", n_tokens, " ".join(f"{s:.4f}" for s in scores))
    return {"scores": scores, "n_tokens": n_tokens, "n_samples": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
            "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb, "device": str(device),
            "devices": model_devices(model)}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="dense model directory")
        p.add_argument("--calib", required=True, type=Path, help="clean calibration view (safetensors input_ids)")
        p.add_argument("--out", required=True, type=Path, help="output JSON (scores per layer)")

    cfg, ns = cli.parse(InfluenceConfig, argv, __doc__.splitlines()[0], extra)
    write_json(ns.out, {"config": asdict(cfg), **run(cfg, ns.model, ns.calib)})


if __name__ == "__main__":
    cli.main_wrapper(main)
