"""Benchmark: depth-PIP pruning at scale, step by step, with peak GPU memory and the memory-bandwidth floor.

Runs the workflow's own step functions in process (pipsteps.plan, pipsteps.gradients for both views, pipsteps.prune,
round after round) on a prepared model directory (`--model`) or on a random-initialised model built from a config
without the hub (`--shape llama-7b`, `llama3-8b` or `tiny`). Calibration windows are random token ids (clean) and a
copy with `--perturb-rate` of the tokens replaced (perturbed): timing and memory do not depend on the text.

For every step it records the wall time and the peak GPU memory (largest per-GPU peak allocation); at the end it
prints the physical floor of the gradient work,

    floor = Σ_rounds 2 views × (2·W_r + G_r) bytes ÷ memory bandwidth

(W_r = weight bytes of round r's model, read once forward and once backward; G_r = its decoder-layer gradient
bytes, written once; all samples in one pass), and the ratio of the measured gradient time to it. The bandwidth is
measured with a large on-device copy unless `--bandwidth-gbs` is given (H100 SXM: 3350). The JSON goes to
bench/out/gpu_scale_<shape>.json.

    python bench/gpu_scale.py --shape tiny                                  # CPU smoke run, seconds
    python bench/gpu_scale.py --shape llama-7b --workdir /scratch/pip-bench # one GPU: 20 %, 10 × 128, bf16
    python bench/gpu_scale.py --model results/base/model --config config.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipsteps.grads import GradConfig  # noqa: E402
from pipsteps.gradients import run as gradients  # noqa: E402
from pipsteps.files import write_json  # noqa: E402
from pipsteps.io import DTYPES, resolve_device, resolve_dtype, set_threads  # noqa: E402
from pipsteps.plan import PlanConfig  # noqa: E402
from pipsteps.plan import run as plan_rounds  # noqa: E402
from pipsteps.prune import PruneConfig  # noqa: E402
from pipsteps.prune import run as prune  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {  # LlamaConfig fields
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


def build_model(shape: str, layers: int | None, device: torch.device, dtype: torch.dtype, out: Path) -> None:
    """A random-initialised Llama of the given shape (built on `device`, no hub), saved with a tiny tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pipsteps.tiny import tiny_tokenizer

    fields = {**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    cfg = LlamaConfig(**fields, max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)  # safetensors (the token ids below never exceed the 512-token tokenizer)
    tiny_tokenizer().save_pretrained(out)
    del model


def calibration(out: Path, n: int, seq_len: int, vocab: int, rate: float) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(3, min(vocab, 512), (n, seq_len), generator=g)
    perturbed = clean.clone()
    mask = torch.rand(clean.shape, generator=g) < rate
    perturbed[mask] = torch.randint(3, min(vocab, 512), (int(mask.sum()),), generator=g)
    paths = out / "clean.safetensors", out / "perturbed.safetensors"
    for p, ids in zip(paths, (clean, perturbed)):
        save_file({"input_ids": ids.contiguous()}, str(p))
    return paths


def measure_bandwidth(device: torch.device) -> float:
    """Copy bandwidth in GB/s (read + write bytes per second) of a 1 GiB (GPU) / 256 MiB (CPU) tensor copy."""
    n = (2**30 if device.type == "cuda" else 2**28) // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dst.copy_(src)
    sync()
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best / 1e9


def floor_bytes(params_total: int, params_layers: int, bytes_per: int) -> int:
    """One round, both views, all samples in one pass: weights read forward and backward, gradients written."""
    return 2 * (2 * params_total * bytes_per + params_layers * bytes_per)


def peak_gpu_mb() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_gpu() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Config file values (workflow keys), overridden by explicit flags."""
    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    get = lambda sect, key, default: (cfg.get(sect) or {}).get(key, default)  # noqa: E731
    pick = lambda flag, sect, key, default: flag if flag is not None else get(sect, key, default)  # noqa: E731
    return {"target_ratio": pick(args.ratio, "prune", "target_ratio", 0.2),
            "n_samples": pick(args.n_samples, "calibration", "n_samples", 10),
            "seq_len": pick(args.seq_len, "calibration", "seq_len", 128),
            "micro_batch": pick(args.micro_batch, "gradients", "micro_batch", 10),
            "save_dtype": pick(args.save_dtype, "gradients", "save_dtype", "bfloat16"),
            "device": pick(args.device, "compute", "device", "auto"),
            "dtype": pick(args.dtype, "compute", "dtype", "auto"),
            "lean_grads": pick(args.lean, "compute", "lean_grads", True),
            "grad_checkpointing": pick(args.checkpointing, "compute", "grad_checkpointing", False),
            "device_map": pick(args.device_map, "compute", "device_map", None)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    s = settings(args)
    set_threads(args.threads)
    device = resolve_device(s["device"], require_gpu=args.require_gpu)
    dtype = resolve_dtype(s["dtype"], device)
    bandwidth = args.bandwidth_gbs or measure_bandwidth(device)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pip-gpu-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []

    def step(name: str, fn, **info: Any) -> Any:
        reset_gpu()
        t = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rec = {"step": name, **info, "wall_s": round(time.perf_counter() - t, 3),
               "peak_gpu_mb": round(peak_gpu_mb(), 1)}
        steps.append(rec)
        print(f"{name:<10} {json.dumps(info):<32} {rec['wall_s']:9.2f} s  peak GPU {rec['peak_gpu_mb']:10.1f} MB",
              flush=True)
        return result

    try:
        model_dir = Path(args.model) if args.model else work / "base"
        if not args.model:
            step("build", lambda: build_model(args.shape, args.layers, device, dtype, model_dir), shape=args.shape)
        vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
        clean, perturbed = calibration(work, s["n_samples"], s["seq_len"], vocab, args.perturb_rate)
        t0 = time.perf_counter()
        plan = step("plan", lambda: plan_rounds(PlanConfig(target_ratio=s["target_ratio"]), model_dir))
        grad_cfg = GradConfig(micro_batch=s["micro_batch"], device=s["device"], dtype=s["dtype"],
                              save_dtype=s["save_dtype"], threads=args.threads, lean=s["lean_grads"],
                              checkpointing=s["grad_checkpointing"], device_map=s["device_map"],
                              require_gpu=args.require_gpu)
        rounds, prev, bytes_floor = [], model_dir, 0
        per_layer, total = plan["params_per_layer"], plan["params_total"]
        for r in range(1, plan["rounds"] + 1):
            rdir = work / f"round_{r}"
            layers_now = plan["num_layers"] - sum(plan["per_round"][: r - 1])
            bytes_floor += floor_bytes(total - (plan["num_layers"] - layers_now) * per_layer, layers_now * per_layer,
                                       torch.finfo(dtype).bits // 8)
            grads = {}
            for view, calib in (("clean", clean), ("perturbed", perturbed)):
                grads[view] = rdir / f"grads_{view}.safetensors"
                cfg = replace(grad_cfg, round=r, view=view)
                step("gradients", lambda: gradients(cfg, prev, calib, grads[view]), round=r, view=view)
            out = step("prune", lambda: prune(PruneConfig(round=r), prev, plan, rdir / "model", grads), round=r)
            rounds.append({"round": r, "removed": [x["orig_index"] for x in out["removed"]],
                           "achieved_ratio": out["achieved_ratio"]})
            for g in grads.values():
                g.unlink()  # as the workflow does: gradient files are temporary
            if prev != model_dir:
                shutil.rmtree(prev)  # keep disk use to two models
            prev = rdir / "model"
        pruning_s = time.perf_counter() - t0
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    grad_s = sum(x["wall_s"] for x in steps if x["step"] == "gradients")
    floor_s = bytes_floor / (bandwidth * 1e9)
    return {
        "settings": s, "shape": None if args.model else args.shape, "model": args.model,
        "layers": plan["num_layers"], "params_total": plan["params_total"], "params_per_layer": per_layer,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "gpus": torch.cuda.device_count(), "host": platform.node(), "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "bandwidth_gbs": round(bandwidth, 1),
        "bandwidth_source": "given" if args.bandwidth_gbs else "measured copy",
        "steps": steps, "rounds": rounds,
        "removed_layers": [i for r in rounds for i in r["removed"]],
        "pruning_s": round(pruning_s, 4), "gradient_s": round(grad_s, 4),
        "peak_gpu_mb": max(x["peak_gpu_mb"] for x in steps if x["step"] != "build"),
        "floor_bytes": bytes_floor, "floor_s": floor_s, "gradient_to_floor": grad_s / floor_s,
        "pruning_to_floor": pruning_s / floor_s, "max_rss_mb": round(max_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny", help="random model to build (no --model)")
    p.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    p.add_argument("--model", default=None, help="prepared model directory instead of a built one")
    p.add_argument("--config", default=None, help="workflow config YAML (prune, calibration, gradients, compute)")
    p.add_argument("--ratio", type=float, default=None, help="prune.target_ratio (0.2)")
    p.add_argument("--n-samples", type=int, default=None, help="calibration.n_samples (10)")
    p.add_argument("--seq-len", type=int, default=None, help="calibration.seq_len (128)")
    p.add_argument("--micro-batch", type=int, default=None, help="gradients.micro_batch (10: one pass)")
    p.add_argument("--save-dtype", choices=list(DTYPES), default=None, help="gradients.save_dtype (bfloat16)")
    p.add_argument("--device", default=None, help="compute.device (auto)")
    p.add_argument("--dtype", default=None, help="compute.dtype (auto: bf16 on GPU)")
    p.add_argument("--lean", type=lambda v: v.lower() == "true", default=None, help="compute.lean_grads (true)")
    p.add_argument("--checkpointing", type=lambda v: v.lower() == "true", default=None,
                   help="compute.grad_checkpointing (false)")
    p.add_argument("--device-map", default=None, help="compute.device_map (none)")
    p.add_argument("--require-gpu", action="store_true", help="fail without CUDA")
    p.add_argument("--perturb-rate", type=float, default=0.2, help="fraction of perturbed tokens")
    p.add_argument("--bandwidth-gbs", type=float, default=None, help="memory bandwidth in GB/s (default: measured)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--workdir", default=None, help="where models and gradients go (kept); default: a temp dir")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--out", default=None, help="JSON output (default bench/out/gpu_scale_<shape>.json)")
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out or REPO / "bench" / "out" / f"gpu_scale_{'model' if args.model else args.shape}.json")
    write_json(out, result)
    print(f"\n{result['layers']} layers, {result['params_total'] / 1e9:.3f} B params on {result['gpu'] or 'CPU'} "
          f"({result['dtype']}); removed {result['removed_layers']}")
    print(f"whole pruning {result['pruning_s']:.1f} s (gradients {result['gradient_s']:.1f} s), "
          f"peak GPU {result['peak_gpu_mb'] / 1024:.2f} GB, peak host RSS {result['max_rss_mb'] / 1024:.2f} GB")
    print(f"floor {result['floor_bytes'] / 1e9:.2f} GB / {result['bandwidth_gbs']:.0f} GB/s = "
          f"{result['floor_s']:.4f} s;"
          f" gradients / floor = {result['gradient_to_floor']:.1f}x, whole pruning / floor = "
          f"{result['pruning_to_floor']:.1f}x")
    print(f"wrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
