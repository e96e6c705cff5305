"""Torch helpers shared by the steps: devices and dtypes, threads, seeds, safetensors gradient files, parameter
counts, timing and peak memory (file helpers: pipsteps.files; model loading: pipsteps.surgery)."""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import torch

from pipsteps.errors import PipError

log = logging.getLogger("pipsteps")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def cuda_status() -> str:
    """Why there is (no) CUDA here, for messages: torch build and the visible devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"torch {torch.__version__} built with CUDA {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}")


def resolve_device(device: str = "auto", require_gpu: bool = False) -> torch.device:
    """`auto` = the first CUDA device when there is one. Without CUDA a GPU step falls back to the CPU with a
    warning, or fails with one line when `require_gpu` (compute.require_gpu) is set."""
    if device.startswith("cuda") or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda" if device == "auto" else device)
        if require_gpu:
            raise PipError(f"compute.require_gpu is true but CUDA is not available ({cuda_status()}); run on a GPU "
                           "node or set compute.require_gpu: false to fall back to the CPU")
        log.warning("no CUDA device (%s): running on the CPU (compute.device %s); set compute.require_gpu: true to "
                    "fail instead", cuda_status(), device)
        return torch.device("cpu")
    if require_gpu:
        raise PipError(f"compute.require_gpu is true but compute.device is {device!r}")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on GPU, fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise PipError(f"unknown dtype {name!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def open_safetensors(path: str | os.PathLike):
    """safe_open with a one-line error naming the file when it is missing, truncated or corrupted."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise PipError(f"missing file: {path}")
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:
        raise PipError(f"corrupted or unreadable safetensors file {path}: {e}") from None


def grad_tensor(f: Any, path: str | os.PathLike, name: str, shape: torch.Size) -> torch.Tensor:
    """Tensor `name` of an open gradient file (pipsteps.gradients) as fp32, checked against the model parameter's
    shape: a missing tensor or another shape means the file was computed on another model."""
    if name not in f.keys():
        raise PipError(f"gradient file {path} has no tensor {name}: it was computed on another model")
    g = f.get_tensor(name).float()
    if g.shape != shape:
        raise PipError(f"gradient {name} in {path} has shape {tuple(g.shape)}, the model {tuple(shape)}: it was "
                       "computed on another model")
    return g


# ---------------------------------------------------------------- models
def model_devices(model: torch.nn.Module) -> list[str]:
    """The devices holding the model's parameters (several with a device_map)."""
    return sorted({str(p.device) for p in model.parameters()})


def count_params(model: torch.nn.Module) -> dict[str, int]:
    """Total (tied weights counted once) and non-embedding parameter counts."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    embedding = emb.numel()
    if out is not None and out.weight is not emb:
        embedding += out.weight.numel()
    return {"total": total, "non_embedding": total - embedding}


class Timer:
    """`with Timer() as t: ...; t.seconds` plus peak memory (CUDA max allocated or process max RSS)."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start
        self.peak_mem_mb = peak_memory_mb()


def peak_memory_mb() -> float:
    """CUDA: the largest peak allocation of any one GPU (what must fit per GPU); CPU: the process's max RSS."""
    if torch.cuda.is_available():
        return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
