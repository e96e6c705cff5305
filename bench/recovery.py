"""Benchmark: LoRA recovery of the embedded SmolLM2 pruned at ratio 0.2, perplexity before and after.

Prepares `embedded:smollm2`, removes 8 of its 30 layers (default: the layers depth PIP removed in the earlier
default run), evaluates held-out perplexity like the default workflow (embedded:heldout, 128- and
2048-token chunks, 4096 tokens), runs a short LoRA recovery on local plain text (embedded:calibration, disjoint from the
evaluation text) and evaluates the recovered model. Writes bench/out/recovery.json.

    python bench/recovery.py [--workdir DIR] [--steps 20] [--batch-size 8] [--cutoff 64] [--lr 1e-3] [--warmup-steps 1]

The defaults: 20 steps of 8 windows × 64 tokens, a few CPU minutes on a quiet 2-core
machine. The pruned model's PPL is cached in --workdir (before.json), so a rerun with other recovery settings only
trains and evaluates the recovered model.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pipsteps.evaluate import EvalConfig
from pipsteps.evaluate import run as evaluate
from pipsteps.files import setup_logging
from pipsteps.prepare_model import PrepareConfig
from pipsteps.prepare_model import run as prepare
from pipsteps.recover import RecoverConfig
from pipsteps.recover import run as recover
from pipsteps.surgery import load_model, load_tokenizer, read_manifest, remove_layers, save_pruned

REPO = Path(__file__).resolve().parents[1]
PIP_LAYERS = (26, 25, 22, 15, 28, 6, 23, 21)  # depth PIP (norm_diff) at ratio 0.2, the earlier default run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, nargs="+", default=list(PIP_LAYERS), help="original layer indices to remove")
    p.add_argument("--source", default="embedded:calibration", help="recovery data (plain text by default)")
    p.add_argument("--steps", type=int, default=20, help="cap on optimizer steps (max_steps; 0 = the epochs decide)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--cutoff", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--eval-steps", type=int, default=5)
    p.add_argument("--val-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None, help="keep the models here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "bench/out/recovery.json")
    ns = p.parse_args()
    setup_logging()
    torch.set_num_threads(ns.threads)
    work = ns.workdir or Path(tempfile.mkdtemp(prefix="pip-recovery-"))
    dense, pruned, recovered = work / "dense", work / "pruned", work / "recovered"
    if not dense.exists():
        prepare(PrepareConfig(source="embedded:smollm2"), dense)
    model = load_model(dense, "cpu")
    remove_layers(model, sorted(ns.layers))
    manifest = read_manifest(dense)
    manifest.update(kept_layers=[i for i in manifest["kept_layers"] if i not in ns.layers], removed_layers=ns.layers,
                    method="pip", score="norm_diff", target_ratio=0.2)
    save_pruned(model, load_tokenizer(dense), pruned, manifest)
    del model
    eval_cfg = EvalConfig(seq_lens=(128, 2048), max_tokens=4096, threads=ns.threads)
    cached = work / "before.json"  # the pruned model's PPL, reused by a rerun with the same --workdir and layers
    before = json.loads(cached.read_text()) if cached.exists() else {}
    if before.get("removed_layers") != ns.layers:
        before = {**evaluate(eval_cfg, pruned), "removed_layers": ns.layers}
        cached.write_text(json.dumps(before))
    cfg = RecoverConfig(source=ns.source, cutoff=ns.cutoff, batch_size=ns.batch_size, micro_batch=ns.micro_batch,
                        lr=ns.lr, epochs=ns.epochs, warmup_steps=ns.warmup_steps, max_steps=ns.steps,
                        eval_steps=ns.eval_steps, save_steps=ns.eval_steps, val_size=ns.val_size, threads=ns.threads)
    shutil.rmtree(work / "checkpoint", ignore_errors=True)  # time a fresh run (checkpoint writes included)
    t = time.perf_counter()
    rec = recover(cfg, pruned, recovered, checkpoint=work / "checkpoint")
    recover_s = time.perf_counter() - t
    after = evaluate(eval_cfg, recovered)
    result = {
        "model": "embedded:smollm2", "removed_layers": ns.layers, "layers_left": before["num_layers"],
        "params_total": before["params_total"], "recovery_config": asdict(cfg),
        "data": {"source": ns.source, "format": rec["format"], "n_train": rec["n_train"], "n_val": rec["n_val"],
                 "tokens_seen": rec["total_steps"] * ns.batch_size * ns.cutoff},
        "steps": rec["total_steps"], "best_step": rec["best_step"], "initial_val_loss": rec["initial_val_loss"],
        "best_val_loss": rec["best_val_loss"], "recover_wall_s": round(recover_s, 1),
        "s_per_step": round(recover_s / max(1, rec["total_steps"]), 2),
        "ppl_before": before["ppl"], "ppl_after": after["ppl"], "eval_tokens": before["tokens"],
        "machine": {"cpu_threads": ns.threads, "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "history": rec["history"],
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("history", "recovery_config")}, indent=2))


if __name__ == "__main__":
    main()
