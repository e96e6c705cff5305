"""Step: inference efficiency of the pruned variants vs the dense model, same device, same process (docs/evaluation.md).

One job measures the dense model once, then each variant (loaded one at a time with `load_model`), and writes one
efficiency.json per variant with the dense figures beside the variant's: every speedup of a run compares models
measured under the same conditions. For each model and each batch size b:

    prefill   one forward pass over a (b, prompt_len) prompt with the KV cache on; latency in ms
    decode    `new_tokens` greedy single-token steps on that cache; tokens/s = b * new_tokens / decode time

The prompt is seeded random token ids (the content does not change the cost). Each batch size gets one untimed
warm-up, then `repeats` timed runs; the median is reported. Peak memory covers loading and measuring one model:
CUDA max allocated on GPU (the largest over the GPUs with a device_map), peak RSS of the process on CPU (VmHWM,
reset before each model on Linux). Parameter
counts count tied embeddings once; the achieved ratio is 1 - pruned/dense.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from pipsteps import cli
from pipsteps.compute import ComputeConfig
from pipsteps.errors import PipError
from pipsteps.files import atomic_outputs, write_json
from pipsteps.io import count_params, resolve_device, resolve_dtype, set_threads
from pipsteps.surgery import load_model

log = logging.getLogger("pipsteps.efficiency")


@dataclass(frozen=True)
class EfficiencyConfig(ComputeConfig):
    prompt_len: int = field(default=64, metadata={"help": "prompt tokens per sequence (prefill)"})
    new_tokens: int = field(default=16, metadata={"help": "greedy decode steps after the prefill"})
    batch_sizes: tuple[int, ...] = field(default=(1, 4), metadata={"help": "batch sizes to measure"})
    repeats: int = field(default=3, metadata={"help": "timed runs per batch size (median reported), after a warm-up"})
    seed: int = field(default=0, metadata={"help": "seed of the random prompt token ids"})

    def __post_init__(self) -> None:
        for name in ("prompt_len", "new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise PipError(f"eval.efficiency.{name} must be at least 1, got {getattr(self, name)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise PipError(f"eval.efficiency.batch_sizes must be positive integers, got {list(self.batch_sizes)}")


# ---------------------------------------------------------------- memory
def _rss_peak_mb() -> float:
    """Peak resident set size of this process since the last reset (VmHWM), or the lifetime peak elsewhere."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak(device: torch.device) -> str:
    """Free what the previous model left and reset the peak counter; returns what the peak measures."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)
        return "cuda_max_allocated"
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so the next model's RSS is its own
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        return "rss_peak"
    except OSError:
        return "rss_peak_process"  # cannot reset: the process-lifetime peak (an upper bound)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
    return _rss_peak_mb()


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # every GPU: a device_map spreads the layers over several
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


@torch.inference_mode()
def generate_once(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int,
                  device: torch.device) -> tuple[float, float, torch.Tensor]:
    """One greedy generation after `prompt` (b, L) with the KV cache: (prefill s, decode s, tokens (b, new_tokens+1)).

    The prefill predicts the first token; each of the `new_tokens` timed decode steps feeds the last token and
    predicts the next one. Like `generate()`, the prefill computes the logits of the last position only.
    """
    out, prefill_s = _timed(lambda: model(input_ids=prompt, use_cache=True, logits_to_keep=1), device)
    tokens = [out.logits[:, -1:].argmax(-1)]

    def decode() -> None:
        cache = out.past_key_values
        for _ in range(new_tokens):
            step = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            tokens.append(step.logits[:, -1:].argmax(-1))

    _, decode_s = _timed(decode, device)
    return prefill_s, decode_s, torch.cat(tokens, dim=1)


def measure(model: torch.nn.Module, cfg: EfficiencyConfig, device: torch.device) -> dict[str, dict[str, float]]:
    """Median prefill latency and decode throughput per batch size."""
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and cfg.prompt_len + cfg.new_tokens > max_pos:
        raise PipError(f"eval.efficiency: prompt_len + new_tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the "
                       f"model's max_position_embeddings ({max_pos})")
    gen = torch.Generator().manual_seed(cfg.seed)
    first = model.get_input_embeddings().weight.device  # where the inputs go (the first shard with a device_map)
    by_batch: dict[str, dict[str, float]] = {}
    for b in cfg.batch_sizes:
        prompt = torch.randint(0, model.config.vocab_size, (b, cfg.prompt_len), generator=gen).to(first)
        generate_once(model, prompt, cfg.new_tokens, device)  # warm-up: kernels, allocator, thread pools
        runs = [generate_once(model, prompt, cfg.new_tokens, device) for _ in range(cfg.repeats)]
        prefill = statistics.median(r[0] for r in runs)
        decode = statistics.median(r[1] for r in runs)
        by_batch[str(b)] = {"prefill_ms": prefill * 1e3, "prefill_tokens_per_s": b * cfg.prompt_len / prefill,
                            "decode_ms_per_step": decode * 1e3 / cfg.new_tokens,
                            "decode_tokens_per_s": b * cfg.new_tokens / decode}
        log.info("batch %d: prefill %.2f ms, decode %.1f tokens/s", b, prefill * 1e3, b * cfg.new_tokens / decode)
    return by_batch


def profile_model(model_dir: Path, cfg: EfficiencyConfig, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    mem_kind = _reset_peak(device)
    model = load_model(model_dir, device, dtype, device_map=cfg.device_map)
    params = count_params(model)
    weights = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    result = {"model": str(model_dir), "num_layers": model.config.num_hidden_layers,
              "params_total": params["total"], "params_non_embedding": params["non_embedding"],
              "weights_mb": sum(weights.values()) / 2**20,
              "batches": measure(model, cfg, device)}
    result.update(peak_mem_mb=_peak_mb(device), mem_kind=mem_kind)
    del model
    return result


def compare(dense: dict[str, Any], pruned: dict[str, Any]) -> dict[str, Any]:
    """A variant's figures against the dense model's: achieved ratios and speedups (dense time / pruned time)."""
    speedup = {b: {"prefill": dense["batches"][b]["prefill_ms"] / pruned["batches"][b]["prefill_ms"],
                   "decode": pruned["batches"][b]["decode_tokens_per_s"] / dense["batches"][b]["decode_tokens_per_s"]}
               for b in dense["batches"]}
    return {"dense": dense, "pruned": pruned,
            "achieved_ratio": 1 - pruned["params_total"] / dense["params_total"],
            "achieved_ratio_non_embedding": 1 - pruned["params_non_embedding"] / dense["params_non_embedding"],
            "speedup": speedup}


def run(cfg: EfficiencyConfig, dense_dir: Path, pruned_dirs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """{stage: result} for the variants `pruned_dirs` ({stage: model directory}); the dense model is measured once."""
    set_threads(cfg.threads)
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    dtype = resolve_dtype(cfg.dtype, device)
    common = {"device": str(device), "device_map": cfg.device_map if device.type == "cuda" else None,
              "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()}
    log.info("dense model %s", dense_dir)
    dense = profile_model(dense_dir, cfg, device, dtype)
    results = {}
    for i, (stage, pruned_dir) in enumerate(pruned_dirs.items(), 1):
        log.info("variant %d of %d: %s", i, len(pruned_dirs), stage)
        results[stage] = {**common, **compare(dense, profile_model(pruned_dir, cfg, device, dtype))}
    return results


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dense", required=True, type=Path, help="dense model directory")
        p.add_argument("--pruned", required=True, nargs="+", type=Path, help="pruned model directory of each variant")
        p.add_argument("--stages", required=True, nargs="+", help="stage name of each variant, in --pruned order")
        p.add_argument("--out", required=True, nargs="+", type=Path, help="output efficiency JSON of each variant")

    cfg, ns = cli.parse(EfficiencyConfig, argv, __doc__.splitlines()[0], extra)
    if not len(ns.pruned) == len(ns.stages) == len(ns.out):
        raise PipError(f"--pruned, --stages and --out need one entry per variant, got {len(ns.pruned)}, "
                       f"{len(ns.stages)} and {len(ns.out)}")
    if len(set(ns.stages)) < len(ns.stages):
        raise PipError(f"--stages names a variant twice: {' '.join(ns.stages)}")
    results = run(cfg, ns.dense, dict(zip(ns.stages, ns.pruned)))
    with atomic_outputs(*ns.out) as outs:  # every variant's file, final together
        for out, (stage, result) in zip(outs, results.items()):
            write_json(out, {"config": asdict(cfg), "stage": stage, **result})
            log.info("%s: params %d -> %d (ratio %.4f); speedup %s", stage, result["dense"]["params_total"],
                     result["pruned"]["params_total"], result["achieved_ratio"], result["speedup"])


if __name__ == "__main__":
    cli.main_wrapper(main)
