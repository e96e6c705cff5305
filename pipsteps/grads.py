"""Mean-loss gradients of every decoder-layer parameter for one calibration view (docs/method.md): the
computation behind the gradient step (pipsteps.gradients) and a pruning round's own gradients (pipsteps.prune).

    G_v = ∇_W  (1/n) Σ_samples  CE(M_r, v_sample)

accumulated in fp32 over micro-batches. The paired view `psdiff` (`--paired`, score fisher_ps) stores instead the
per-sample squared gradient difference, elementwise,

    S = (1/m) Σ_r (g_clean,⌊r/k⌋ − g_pert,r)²   (g_v,i = ∇_W CE(M_r, sample i of view v); m = n·k perturbed rows)

which is (G_clean − G_pert)² plus the spread of the per-sample differences around it. Only decoder-layer
weights take gradients (embeddings, final norm and the tied lm_head are frozen, which also saves the large
embedding gradient). `write_view` writes one safetensors file (`model.layers.{i}.…` → tensor in `save_dtype`)
and returns a record with the loss and per-layer gradient norms.
Non-finite losses or gradients fail naming the round, view and layer; all-zero layer gradients are reported.

Memory (compute.*): `lean` (default) moves each parameter's gradient off the compute device the moment backward
produces it (a post-accumulate-grad hook) and sums the micro-batches in fp32 in host memory, so the GPU holds the
weights, the activations and one parameter's gradient, never a full gradient or an fp32 copy of the model. On the
CPU it gives the same numbers as the plain path (same operations, same order). `checkpointing` recomputes each
decoder layer's activations in backward (larger micro-batches fit). `device_map` shards the model over the GPUs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from pipsteps.compute import ComputeConfig
from pipsteps.errors import PipError
from pipsteps.io import Timer, model_devices, open_safetensors, resolve_device, resolve_dtype
from pipsteps.surgery import load_model

log = logging.getLogger("pipsteps.grads")
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class GradConfig(ComputeConfig):
    round: int = field(default=1, metadata={"help": "pruning round (for messages and metadata)"})
    view: str = field(default="clean", metadata={"help": "calibration view name (for messages and metadata)"})
    micro_batch: int = field(default=4, metadata={"help": "samples per forward/backward pass"})
    save_dtype: str = field(default="float32", metadata={"help": "stored gradient dtype (float32 or bfloat16)"})
    lean: bool = field(default=True, metadata={"help": "sum gradients per parameter in fp32 host memory as backward "
                                                       "produces them (false: fp32 accumulator on the device)"})
    checkpointing: bool = field(default=False, metadata={"help": "recompute decoder-layer activations in backward"})


def load_ids(path: Path) -> torch.Tensor:
    with open_safetensors(path) as f:
        if "input_ids" not in f.keys():
            raise PipError(f"{path} has no input_ids tensor: not a calibration view")
        return f.get_tensor("input_ids")  # (n, L) int64


def layer_of(name: str) -> int | None:
    m = LAYER_KEY.match(name)
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def activation_checkpointing(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute each decoder layer's activations in backward. HF checkpoints only layers in training mode, so
    only the layer modules themselves are flagged as training: their attention/MLP submodules stay in eval mode
    (no dropout), and everything is restored afterwards."""
    if not enabled:
        yield
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers or not getattr(model, "supports_gradient_checkpointing", False):
        raise PipError(f"{type(model).__name__} does not support activation checkpointing (compute.grad_checkpointing)")
    was_training = [m.training for m in layers]
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for m in layers:
        m.training = True  # not .train(): that would switch the submodules' dropout on too
    try:
        yield
    finally:
        for m, t in zip(layers, was_training):
            m.training = t
        model.activation_checkpointing_disable()
        model.disable_input_require_grads()


def collect(model: torch.nn.Module, ids: torch.Tensor, cfg: GradConfig, progress: bool = True
            ) -> tuple[dict[str, torch.Tensor], float]:
    """Return ({param name: fp32 mean-loss gradient} for decoder-layer params, mean loss).

    Plain path: an fp32 accumulator beside each parameter, added to after each micro-batch's backward. Lean path:
    a hook adds each parameter's gradient into an fp32 host tensor as soon as backward has produced it and frees
    it, so the device never holds a whole gradient. Both add the same tensors in the same order.
    """
    device = next(model.parameters()).device
    params = {n: p for n, p in model.named_parameters() if layer_of(n) is not None}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    acc: dict[str, torch.Tensor] = {}
    if not cfg.lean:
        acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def to_host(name: str) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            g = p.grad.to("cpu", torch.float32)
            p.grad = None
            if name in acc:
                acc[name] += g
            else:  # first micro-batch: 0 + g == g, so the sum is the plain path's. g is ours alone (p.grad is None)
                acc[name] = g
        return hook

    hooks = [p.register_post_accumulate_grad_hook(to_host(name)) for name, p in params.items()] if cfg.lean else []
    n, total = ids.shape[0], 0.0
    batches = list(torch.split(ids, cfg.micro_batch))
    try:
        with activation_checkpointing(model, cfg.checkpointing):
            for b, x in enumerate(tqdm(batches, desc=f"grads r{cfg.round} {cfg.view}", unit="batch",
                                       disable=not progress)):
                x = x.to(device)
                loss = model(input_ids=x, labels=x, use_cache=False).loss  # mean over the batch's tokens
                if not torch.isfinite(loss):
                    raise PipError(f"non-finite loss ({loss.item()}) in round {cfg.round}, view {cfg.view}, "
                                   f"micro-batch {b} — try dtype float32 (fp16 overflows easily)")
                (loss * (x.shape[0] / n)).backward()  # equal-length samples: batch mean × weight = mean over samples
                total += loss.item() * x.shape[0] / n
                if not cfg.lean:
                    for name, p in params.items():
                        acc[name] += p.grad.float()
                        p.grad = None
    finally:
        for h in hooks:
            h.remove()
        for p in params.values():
            p.grad = None
    missing = [name for name in params if name not in acc]
    if missing:  # a parameter that does not reach the loss: zero gradient, as in the plain path
        acc.update({name: torch.zeros(params[name].shape, dtype=torch.float32) for name in missing})
    return {name: acc[name] for name in params}, total


def paired_sq_diff(model: torch.nn.Module, clean: torch.Tensor, perturbed: torch.Tensor, cfg: GradConfig
                   ) -> tuple[dict[str, torch.Tensor], float, float]:
    """(S = mean over perturbed rows r of (g_clean,⌊r/k⌋ − g_pert,r)², elementwise; mean clean loss; mean
    perturbed loss). Row r of the perturbed view is a perturbation of clean window ⌊r/k⌋ (pipsteps.calibration
    draws = k); every per-sample gradient is one forward/backward of that sample alone (2n·k passes of one sample)."""
    n, m = clean.shape[0], perturbed.shape[0]
    if m % n:
        raise PipError(f"the perturbed view has {m} rows, not a multiple of the clean view's {n}: the two views do "
                       "not come from the same calibration step")
    k, one = m // n, replace(cfg, micro_batch=1)
    acc: dict[str, torch.Tensor] = {}
    lc = lp = 0.0
    for i in tqdm(range(n), desc=f"per-sample grads r{cfg.round}", unit="window"):
        gc, loss_c = collect(model, clean[i:i + 1], one, progress=False)
        lc += loss_c / n
        for r in range(i * k, (i + 1) * k):
            gp, loss_p = collect(model, perturbed[r:r + 1], one, progress=False)
            lp += loss_p / m
            for name, g in gc.items():
                d2 = (g - gp[name]).square_()
                acc[name] = acc[name].add_(d2) if name in acc else d2
    return {name: a.div_(m) for name, a in acc.items()}, lc, lp


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


def write_view(model: torch.nn.Module, calib: Path, cfg: GradConfig, out: Path, paired: Path | None = None
               ) -> dict[str, Any]:
    """Gradients of the loaded `model` on the view `calib` (with `paired`, the per-sample statistic S against the
    perturbed view), saved to `out` in `save_dtype`; returns their metrics. Used by `run` and by a pruning round
    that takes its own gradients (pipsteps.prune, rounds r ≥ 2)."""
    device = next(model.parameters()).device
    with Timer() as t:
        ids = load_ids(calib)
        extra: dict[str, Any] = {}
        if paired is None:
            grads, loss = collect(model, ids, cfg)
        else:
            grads, loss, extra["perturbed_loss"] = paired_sq_diff(model, ids, load_ids(paired), cfg)
        zero = check_finite(grads, cfg)
        if zero:
            log.warning("round %d view %s: layers %s have all-zero gradients", cfg.round, cfg.view, zero)
        save_dt = resolve_dtype(cfg.save_dtype, device)
        meta = {"round": str(cfg.round), "view": cfg.view, "loss": repr(loss), "n_samples": str(ids.shape[0])}
        save_file({k: v.to(save_dt).contiguous().cpu() for k, v in grads.items()}, str(out), metadata=meta)
    log.info("round %d view %s: loss %.4f, %d tensors in %.1fs", cfg.round, cfg.view, loss, len(grads), t.seconds)
    return {"loss": loss, "grad_norm_per_layer": layer_norms(grads), "zero_grad_layers": zero, **extra,
            "n_samples": int(ids.shape[0]), "seq_len": int(ids.shape[1]), "wall_s": t.seconds,
            "peak_mem_mb": t.peak_mem_mb, "device": str(device), "devices": model_devices(model)}


def load_for_grads(model_dir: Path, cfg: GradConfig) -> torch.nn.Module:
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    return load_model(model_dir, device, resolve_dtype(cfg.dtype, device), device_map=cfg.device_map)
