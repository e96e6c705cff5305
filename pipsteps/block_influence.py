"""Step: ShortGPT block influence of every decoder layer, forward only (docs/methods.md; Men et al. 2024).

    BI_i = 1 − mean over the clean calibration tokens of cos(h_in,i, h_out,i)

where h_in,i / h_out,i are the hidden states entering and leaving decoder layer i (the residual stream, before
the final norm). A layer that barely changes its input has a low BI and is removed first. Computed once on the
dense model (the `block_influence` method is one-shot) and cached in results/base/block_influence.json.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipsteps import cli
from pipsteps.compute import ComputeConfig
from pipsteps.gradients import load_ids
from pipsteps.io import (PipError, Timer, load_model, model_devices, resolve_device, resolve_dtype, set_threads,
                         write_json)
from pipsteps.surgery import decoder_layers

log = logging.getLogger("pipsteps.block_influence")


@dataclass(frozen=True)
class InfluenceConfig(ComputeConfig):
    micro_batch: int = field(default=4, metadata={"help": "samples per forward pass"})


@torch.no_grad()
def block_influence(model: torch.nn.Module, ids: torch.Tensor, micro_batch: int = 4) -> tuple[list[float], int]:
    """(BI per decoder layer, number of tokens averaged over). Cosines are computed in fp32 and summed in fp64."""
    layers = decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}

    def pre(i: int):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i: int):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(inputs.pop(i).float(), out.float(), dim=-1)  # (batch, seq)
            sums[i] += cos.sum(dtype=torch.float64).cpu()
        return hook

    handles = [h for i, layer in enumerate(layers)
               for h in (layer.register_forward_pre_hook(pre(i), with_kwargs=True),
                         layer.register_forward_hook(post(i), with_kwargs=True))]
    device = next(model.parameters()).device
    try:
        for x in tqdm(torch.split(ids, micro_batch), desc="block influence", unit="batch"):
            model.model(input_ids=x.to(device), use_cache=False)  # the decoder stack only: no lm_head logits
    finally:
        for h in handles:
            h.remove()
    n_tokens = ids.numel()
    bi = (1.0 - sums / n_tokens).tolist()
    bad = [i for i, v in enumerate(bi) if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        raise PipError(f"non-finite block influence in layer(s) {bad}: check the model (try dtype float32)")
    return bi, n_tokens


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
