"""Shared I/O helpers: atomic writes, JSON, logging, devices/dtypes and parameter counts (model loading:
pipsteps.surgery).

Every output is written to a temporary sibling first and renamed into place, so a killed job never leaves a file
(or model directory) that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError

from pipsteps.errors import PipError

log = logging.getLogger("pipsteps")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}




def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds (file or directory).

    On any failure (a killed process leaves only a hidden `.NAME.*.partial` directory, removed by the next write of
    the same output) nothing is left at `path`. Write errors such as a full disk become a one-line PipError.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)  # left behind by a killed earlier attempt at this output
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    except (OSError, SafetensorError) as e:  # safetensors reports I/O failures (EFBIG, ENOSPC) as its own error
        reason = getattr(e, "strerror", None) or str(e)
        raise PipError(f"could not write {final}: {reason} (disk full?); nothing was left behind") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike | None) -> Iterator[list[Path | None]]:
    """Temporary siblings for all the outputs of one step (None stays None: an optional output not asked for),
    renamed into place back to back, in the order given, only once the whole block has succeeded.

    A job killed while it computes or writes leaves none of its outputs final: not a complete-looking gradient
    file beside a missing metrics JSON. Give the record that marks the step done (its metrics JSON) last.
    """
    with contextlib.ExitStack() as stack:
        tmps = {i: stack.enter_context(atomic_path(p))  # entered last to first: the exits rename first to last
                for i, p in reversed(list(enumerate(paths))) if p is not None}
        yield [tmps.get(i) for i in range(len(paths))]


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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_utf8(path: Path, source: str, missing: str = "text file not found") -> str:
    """The text of a local input file, or one line naming it: missing, or not UTF-8 (with the bad byte)."""
    if not path.is_file():
        raise PipError(f"{missing}: {source}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PipError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # e.g. truncated by a killed writer or by hand
        raise PipError(f"{path} is not valid JSON: {e}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


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
