"""Step: LoRA recovery of a pruned model, merged and saved in the pruned-model format (docs/recovery.md).

LLM-Pruner's recipe as defaults: LoRA r 8, alpha 16, dropout 0.05 on all 7 projections, AdamW lr 1e-4 with 100
linear warm-up steps then linear decay, 2 epochs, batch 64 by gradient accumulation over micro-batches of 4,
cutoff 256 tokens, loss on the response only for instruction data (pipsteps.recovery_data). A held-out split is
evaluated every `eval_steps` steps (and before the first one), and the adapter with the lowest validation loss is
kept: merged into the base weights and written with `save_pruned` (manifest preserved, plus a `recovery` entry), so
the recovered model loads and evaluates like any other stage. Every `save_steps` steps the adapter, AdamW and
scheduler state, RNG states and history go to the checkpoint directory (pipsteps.recovery_state, no pickle); a
rerun of a killed job continues from there.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipsteps import cli
from pipsteps.compute import ComputeConfig
from pipsteps.errors import PipError
from pipsteps.files import atomic_outputs, atomic_path, write_json
from pipsteps.io import Timer, count_params, resolve_device, resolve_dtype, seed_everything, set_threads
from pipsteps.recovery_data import IGNORE, Example, build_examples, collate, split_examples
from pipsteps.recovery_state import fingerprint, latest_checkpoint, load_checkpoint, save_checkpoint, tokens_hash
from pipsteps.surgery import load_model, load_tokenizer, read_manifest, save_pruned

log = logging.getLogger("pipsteps.recover")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NOT_FINGERPRINTED = ("save_steps", "device", "threads", "device_map", "require_gpu")  # do not change the result


@dataclass(frozen=True)
class RecoverConfig(ComputeConfig):
    """compute.* (ComputeConfig): device, dtype of the frozen base (auto: bf16 GPU, fp32 CPU), threads,
    device_map, require_gpu; then the recovery.* settings."""

    source: str = field(default="yahma/alpaca-cleaned", metadata={
        "help": "HF dataset, local .json/.jsonl (instruction/input/output or text_field) or .txt, or embedded:<part>"})
    format: str = field(default="auto", metadata={"help": "auto, instruction or text (causal LM on every token)"})
    dataset_config: str | None = field(default=None, metadata={"help": "HF dataset config name"})
    split: str = field(default="train", metadata={"help": "HF dataset split"})
    text_field: str = field(default="text", metadata={"help": "text field of JSON/dataset rows (text format)"})
    max_examples: int = field(default=0, metadata={"help": "use only the first N rows (0 = all)"})
    val_size: int = field(default=2000, metadata={"help": "held-out examples (capped at a fifth of the data)"})
    cutoff: int = field(default=256, metadata={"help": "tokens per example (truncation / text window length)"})
    train_on_inputs: bool = field(default=False, metadata={"help": "instruction data: loss on the prompt too"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(default=PROJECTIONS, metadata={"help": "module names that get LoRA"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate"})
    epochs: int = field(default=2, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=64, metadata={"help": "examples per optimizer step"})
    micro_batch: int = field(default=4, metadata={"help": "examples per forward/backward (gradient accumulation)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    max_steps: int = field(default=0, metadata={"help": "cap on optimizer steps, e.g. for CPU runs (0 = epochs)"})
    eval_steps: int = field(default=100, metadata={"help": "validation every N steps"})
    save_steps: int = field(default=100, metadata={"help": "resumable checkpoint every N steps"})
    seed: int = field(default=0, metadata={"help": "seed: split, data order, LoRA init, dropout"})


def check(cfg: RecoverConfig) -> None:
    if cfg.batch_size % cfg.micro_batch:
        raise PipError(f"batch_size={cfg.batch_size} must be a multiple of micro_batch={cfg.micro_batch}")
    for name in ("cutoff", "r", "epochs", "micro_batch", "eval_steps", "save_steps", "val_size"):
        if getattr(cfg, name) < 1:
            raise PipError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not cfg.target_modules:
        raise PipError("target_modules is empty")


def attach(model: torch.nn.Module, cfg: RecoverConfig, adapter: dict[str, torch.Tensor] | None = None):
    """Wrap `model` (in place) with a LoRA adapter; load `adapter` weights when given."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        raise PipError(f"target_modules {missing} not found in the model")
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
                      bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    if adapter is not None:
        res = set_peft_model_state_dict(pm, adapter)
        if res.unexpected_keys:
            raise PipError(f"adapter does not fit the model: unexpected keys {res.unexpected_keys[:3]}")
    return pm


def adapter_state(pm: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(pm).items()}


def nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed next-token NLL over the labelled tokens of a micro-batch."""
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   use_cache=False).logits[:, :-1].float()  # (b, L-1, vocab)
    labels = batch["labels"][:, 1:].to(device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


@torch.no_grad()
def val_loss(model: torch.nn.Module, examples: list[Example], micro_batch: int, pad_id: int) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = sum(nll_sum(model, collate(examples[i:i + micro_batch], pad_id), device).item()
                for i in range(0, len(examples), micro_batch))
    model.train(was_training)
    loss = total / sum(e.n_targets for e in examples)
    if not math.isfinite(loss):
        raise PipError(f"non-finite validation loss {loss}: use dtype float32 or check the model")
    return loss


def plan_steps(cfg: RecoverConfig, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps): full batches only (the remainder of a shuffled epoch is skipped)."""
    per_epoch = max(1, n_train // cfg.batch_size)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def batch_indices(cfg: RecoverConfig, n_train: int, per_epoch: int, step: int, cache: dict[int, list[int]]) -> list[int]:
    """Examples of optimizer step `step` (0-based): a seeded permutation per epoch, so a resumed run sees the same."""
    epoch, k = divmod(step, per_epoch)
    if epoch not in cache:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + 1)
        cache.clear()
        cache[epoch] = torch.randperm(n_train, generator=g).tolist()
    return cache[epoch][k * cfg.batch_size:(k + 1) * cfg.batch_size]


def train(model: torch.nn.Module, train_set: list[Example], val_set: list[Example], cfg: RecoverConfig, pad_id: int,
          checkpoint: Path | None = None, fp: str = "") -> dict[str, Any]:
    """Train a LoRA adapter on `model` (wrapped in place); return the best adapter (CPU tensors) and the history."""
    from peft import set_peft_model_state_dict
    from transformers import get_linear_schedule_with_warmup

    check(cfg)
    device = next(model.parameters()).device
    seed_everything(cfg.seed)
    pm = attach(model, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    per_epoch, total = plan_steps(cfg, len(train_set))
    sched = get_linear_schedule_with_warmup(opt, cfg.warmup_steps, total)
    ck = latest_checkpoint(checkpoint, fp) if checkpoint else None
    if ck:
        st, current, best = load_checkpoint(ck, opt, sched)
        set_peft_model_state_dict(pm, current)
        start = resumed = st["step"]
        hist, best_loss, best_step = st["history"], st["best_val_loss"], st["best_step"]
        log.info("resumed from checkpoint %s at step %d of %d", ck, start, total)
    else:
        start, resumed = 0, None
        v = val_loss(pm, val_set, cfg.micro_batch, pad_id)
        hist = {"train": [], "val": [{"step": 0, "loss": v}]}
        best, best_loss, best_step = adapter_state(pm), v, 0
        log.info("step 0/%d: validation loss %.4f (pruned model, before training)", total, v)
    cache: dict[int, list[int]] = {}
    bar = tqdm(total=total, initial=start, desc="lora", unit="step")
    for s in range(start, total):
        batch = [train_set[i] for i in batch_indices(cfg, len(train_set), per_epoch, s, cache)]
        n_tok = sum(e.n_targets for e in batch)
        step_nll = 0.0
        for j in range(0, len(batch), cfg.micro_batch):
            nll = nll_sum(pm, collate(batch[j:j + cfg.micro_batch], pad_id), device)
            (nll / n_tok).backward()
            step_nll += nll.item()
        loss = step_nll / n_tok
        if not math.isfinite(loss):
            raise PipError(f"non-finite training loss at step {s + 1}: use dtype float32 or a lower lr")
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step = s + 1
        hist["train"].append({"step": step, "loss": loss, "lr": lr})
        if step % cfg.eval_steps == 0 or step == total:
            v = val_loss(pm, val_set, cfg.micro_batch, pad_id)
            hist["val"].append({"step": step, "loss": v})
            if v < best_loss:
                best, best_loss, best_step = adapter_state(pm), v, step
            log.info("step %d/%d: train loss %.4f, validation loss %.4f (best %.4f at step %d)", step, total, loss, v,
                     best_loss, best_step)
        if checkpoint and (step % cfg.save_steps == 0 or step == total):
            save_checkpoint(checkpoint, step, adapter_state(pm), best, opt, sched,
                            {"fingerprint": fp, "total_steps": total, "history": hist, "best_val_loss": best_loss,
                             "best_step": best_step})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{hist['val'][-1]['loss']:.3f}")
    bar.close()
    return {"adapter": best, "history": hist, "best_step": best_step, "best_val_loss": best_loss,
            "total_steps": total, "steps_per_epoch": per_epoch, "resumed_from_step": resumed,
            "trainable_params": sum(p.numel() for p in params)}


def merge(model_dir: Path, cfg: RecoverConfig, adapter: dict[str, torch.Tensor], device: torch.device,
          adapter_out: Path | None = None) -> torch.nn.Module:
    """Fresh base model in its stored dtype + the adapter, optionally saved (peft format), merged into the weights."""
    pm = attach(load_model(model_dir, device, device_map=cfg.device_map), cfg, adapter)
    if adapter_out is not None:
        with atomic_path(adapter_out) as tmp:
            pm.save_pretrained(tmp)
    return pm.merge_and_unload().eval()


def plot_history(history: dict[str, list[dict[str, float]]], best_step: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["step"] for h in history["train"]], [h["loss"] for h in history["train"]], label="train")
    ax.plot([h["step"] for h in history["val"]], [h["loss"] for h in history["val"]], "o-", label="validation")
    ax.axvline(best_step, color="grey", linestyle=":", label=f"best (step {best_step})")
    ax.set(xlabel="optimizer step", ylabel="loss (mean token NLL)", title="LoRA recovery")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def run(cfg: RecoverConfig, model_dir: Path, out: Path, adapter_out: Path | None = None,
        checkpoint: Path | None = None) -> dict[str, Any]:
    check(cfg)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    with Timer() as t:
        tok = load_tokenizer(model_dir)
        examples, fmt = build_examples(tok, cfg.source, fmt=cfg.format, dataset_config=cfg.dataset_config,
                                       split=cfg.split, text_field=cfg.text_field, cutoff=cfg.cutoff,
                                       train_on_inputs=cfg.train_on_inputs, max_examples=cfg.max_examples)
        train_set, val_set = split_examples(examples, cfg.val_size, cfg.seed)
        log.info("recovery data %s (%s): %d train / %d validation examples", cfg.source, fmt, len(train_set),
                 len(val_set))
        manifest = read_manifest(model_dir)
        fp = fingerprint({k: v for k, v in asdict(cfg).items() if k not in NOT_FINGERPRINTED},
                         (model_dir / "config.json").read_text(), manifest, tokens_hash(train_set + val_set))
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        model = load_model(model_dir, device, resolve_dtype(cfg.dtype, device), device_map=cfg.device_map)
        result = train(model, train_set, val_set, cfg, pad_id, checkpoint, fp)
        del model
        gc.collect()
        merged = merge(model_dir, cfg, result["adapter"], device, adapter_out)
        manifest["recovery"] = {"method": "lora", "source": cfg.source, "format": fmt, "r": cfg.r,
                                "alpha": cfg.alpha, "dropout": cfg.dropout, "target_modules": list(cfg.target_modules),
                                "lr": cfg.lr, "steps": result["total_steps"], "best_step": result["best_step"],
                                "best_val_loss": result["best_val_loss"], "seed": cfg.seed}
        save_pruned(merged, tok, out, manifest)
    hist = result["history"]
    log.info("LoRA recovery: %d steps, validation loss %.4f -> %.4f (best, step %d), %.1f s", result["total_steps"],
             hist["val"][0]["loss"], result["best_val_loss"], result["best_step"], t.seconds)
    return {"source": cfg.source, "format": fmt, "n_train": len(train_set), "n_val": len(val_set),
            "train_target_tokens": sum(e.n_targets for e in train_set), "steps_per_epoch": result["steps_per_epoch"],
            "total_steps": result["total_steps"], "resumed_from_step": result["resumed_from_step"],
            "best_step": result["best_step"], "best_val_loss": result["best_val_loss"],
            "initial_val_loss": hist["val"][0]["loss"], "trainable_params": result["trainable_params"],
            "params_total": count_params(merged)["total"], "num_layers": merged.config.num_hidden_layers,
            "history": hist, "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb, "device": str(device)}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="pruned model directory (a variant's last round)")
        p.add_argument("--out", required=True, type=Path, help="output directory of the merged, recovered model")
        p.add_argument("--adapter", type=Path, default=None, help="output directory of the best adapter (peft)")
        p.add_argument("--checkpoint", type=Path, default=None,
                       help="resumable checkpoint directory (kept across reruns, removed after success)")
        p.add_argument("--metrics", required=True, type=Path, help="output recovery JSON (loss history included)")
        p.add_argument("--plot", type=Path, default=None, help="output loss-curve PNG")

    cfg, ns = cli.parse(RecoverConfig, argv, __doc__.splitlines()[0], extra)
    # the merged model, adapter, plot and recovery JSON become final together (the checkpoint is not an output)
    with atomic_outputs(ns.out, ns.adapter, ns.plot, ns.metrics) as (out, adapter, plot, metrics_out):
        metrics = run(cfg, ns.model, out, adapter, ns.checkpoint)
        if plot:
            plot_history(metrics["history"], metrics["best_step"], plot)
        write_json(metrics_out, {"config": asdict(cfg), **metrics})
    if ns.checkpoint and ns.checkpoint.exists():
        shutil.rmtree(ns.checkpoint)  # every output is in place: the next run of this job starts afresh


if __name__ == "__main__":
    cli.main_wrapper(main)
