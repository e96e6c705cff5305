"""Step: mean-loss gradients of every decoder-layer parameter for one calibration view (METHOD.md §3).

    G_v = ∇_W  (1/n) Σ_samples  CE(M_r, v_sample)

accumulated in fp32 over micro-batches. Only decoder-layer weights take gradients (embeddings, final norm and the
tied lm_head are frozen, which also saves the large embedding gradient). Writes one safetensors file
(`model.layers.{i}.…` → tensor in `save_dtype`) and a metrics JSON with the loss and per-layer gradient norms.
Non-finite losses or gradients fail naming the round, view and layer; all-zero layer gradients are reported.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipsteps import cli
from pipsteps.io import (PipError, Timer, atomic_path, load_model, open_safetensors, resolve_device, resolve_dtype,
                         set_threads, write_json)

log = logging.getLogger("pipsteps.gradients")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class GradConfig:
    round: int = field(default=1, metadata={"help": "pruning round (for messages and metadata)"})
    view: str = field(default="clean", metadata={"help": "calibration view name (for messages and metadata)"})
    micro_batch: int = field(default=4, metadata={"help": "samples per forward/backward pass"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "compute dtype: auto (bf16 on GPU, fp32 on CPU) or explicit"})
    save_dtype: str = field(default="float32", metadata={"help": "stored gradient dtype (float32 or bfloat16)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})


def load_ids(path: Path) -> torch.Tensor:
    with open_safetensors(path) as f:
        if "input_ids" not in f.keys():
            raise PipError(f"{path} has no input_ids tensor: not a calibration view")
        return f.get_tensor("input_ids")  # (n, L) int64


def layer_of(name: str) -> int | None:
    m = LAYER_KEY.match(name)
    return int(m.group(1)) if m else None


def collect(model: torch.nn.Module, ids: torch.Tensor, cfg: GradConfig) -> tuple[dict[str, torch.Tensor], float]:
    """Return ({param name: fp32 mean-loss gradient} for decoder-layer params, mean loss)."""
    device = next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if layer_of(n) is not None}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    n, total = ids.shape[0], 0.0
    batches = list(torch.split(ids, cfg.micro_batch))
    for b, x in enumerate(tqdm(batches, desc=f"grads r{cfg.round} {cfg.view}", unit="batch")):
        x = x.to(device)
        loss = model(input_ids=x, labels=x, use_cache=False).loss  # mean over the batch's tokens
        if not torch.isfinite(loss):
            raise PipError(f"non-finite loss ({loss.item()}) in round {cfg.round}, view {cfg.view}, micro-batch {b}"
                           " — try dtype float32 (fp16 overflows easily)")
        (loss * (x.shape[0] / n)).backward()  # equal-length samples: batch mean × weight = mean over samples
        total += loss.item() * x.shape[0] / n
        for name, p in params.items():
            acc[name] += p.grad.float()
            p.grad = None
    return acc, total


def check_finite(grads: dict[str, torch.Tensor], cfg: GradConfig) -> list[int]:
    """Fail on NaN/inf (naming the layer); return the layers whose gradient is exactly zero."""
    per_layer: dict[int, float] = {}
    for name, g in grads.items():
        if not torch.isfinite(g).all():
            raise PipError(f"non-finite gradient in round {cfg.round}, view {cfg.view}, layer {layer_of(name)} "
                           f"({name})")
        per_layer[layer_of(name)] = per_layer.get(layer_of(name), 0.0) + float(g.abs().sum())
    return sorted(i for i, s in per_layer.items() if s == 0.0)


def layer_norms(grads: dict[str, torch.Tensor]) -> list[float]:
    sq: dict[int, float] = {}
    for name, g in grads.items():
        sq[layer_of(name)] = sq.get(layer_of(name), 0.0) + float(g.double().pow(2).sum())
    return [math.sqrt(sq[i]) for i in sorted(sq)]


def run(cfg: GradConfig, model_dir: Path, calib: Path, out: Path) -> dict[str, Any]:
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    with Timer() as t:
        model = load_model(model_dir, device, resolve_dtype(cfg.dtype, device))
        ids = load_ids(calib)
        grads, loss = collect(model, ids, cfg)
        zero = check_finite(grads, cfg)
        if zero:
            log.warning("round %d view %s: layers %s have all-zero gradients", cfg.round, cfg.view, zero)
        save_dt = resolve_dtype(cfg.save_dtype, device)
        meta = {"round": str(cfg.round), "view": cfg.view, "loss": repr(loss), "n_samples": str(ids.shape[0])}
        with atomic_path(out) as tmp:
            save_file({k: v.to(save_dt).contiguous().cpu() for k, v in grads.items()}, str(tmp), metadata=meta)
    log.info("round %d view %s: loss %.4f, %d tensors in %.1fs", cfg.round, cfg.view, loss, len(grads), t.seconds)
    return {"loss": loss, "grad_norm_per_layer": layer_norms(grads), "zero_grad_layers": zero,
            "n_samples": int(ids.shape[0]), "seq_len": int(ids.shape[1]), "wall_s": t.seconds,
            "peak_mem_mb": t.peak_mem_mb, "device": str(device)}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory of this round")
        p.add_argument("--calib", required=True, type=Path, help="calibration view (safetensors input_ids)")
        p.add_argument("--out", required=True, type=Path, help="output gradients (safetensors)")
        p.add_argument("--metrics", required=True, type=Path, help="output metrics JSON")

    cfg, ns = cli.parse(GradConfig, argv, __doc__.splitlines()[0], extra)
    metrics = run(cfg, ns.model, ns.calib, ns.out)
    write_json(ns.metrics, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
