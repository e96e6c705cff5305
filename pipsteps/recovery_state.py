"""Resumable LoRA checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory `step_NNNNNN/` written atomically (temporary sibling, then rename) under the checkpoint
root, with:

- `adapter.safetensors`: the current LoRA weights; `best.safetensors`: the best ones by validation loss so far;
- `optimizer.safetensors`: AdamW's per-parameter state flattened to `{param index}.{key}` tensors (`step`,
  `exp_avg`, `exp_avg_sq`); `rng.safetensors`: the torch CPU (and CUDA) generator states;
- `state.json`: step, loss history, best step/loss, the optimizer's param groups, the LR scheduler's state, Python's
  `random` state and the run fingerprint.

Only the newest complete checkpoint is kept. A checkpoint whose fingerprint (config, base model, data) differs from
the current run's is discarded, so changed settings restart training instead of resuming into a different run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipsteps.errors import PipError
from pipsteps.files import atomic_path

log = logging.getLogger("pipsteps.recovery_state")


def fingerprint(*parts: Any) -> str:
    """sha256 over JSON-serialisable parts (config, model config + manifest, a hash of the token ids)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


def tokens_hash(examples: list[Any]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(torch.tensor(e.input_ids + [-1] + e.labels, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """AdamW state as flat tensors plus JSON-serialisable param groups."""
    sd = opt.state_dict()
    tensors = {f"{idx}.{key}": (val if isinstance(val, torch.Tensor) else torch.tensor(val))
               for idx, st in sd["state"].items() for key, val in st.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return _cpu(tensors), groups


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], Any]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, random.getstate()


def set_rng_state(tensors: dict[str, torch.Tensor], py_state: Any) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda_")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = py_state
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(root: Path, step: int, adapter: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
                    opt: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> Path:
    """Write `root/step_NNNNNN` atomically, then remove older checkpoints."""
    final = root / f"step_{step:06d}"
    opt_tensors, groups = optimizer_tensors(opt)
    rng, py_rng = rng_state()
    with atomic_path(final) as tmp:
        tmp.mkdir()
        save_file(_cpu(adapter), str(tmp / "adapter.safetensors"))
        save_file(_cpu(best), str(tmp / "best.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(_cpu(rng), str(tmp / "rng.safetensors"))
        doc = {**state, "step": step, "param_groups": groups, "scheduler": scheduler.state_dict(),
               "python_random": py_rng}
        (tmp / "state.json").write_text(json.dumps(doc, indent=1) + "\n")
    for old in root.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path, fp: str) -> Path | None:
    """The newest complete checkpoint of this run, or None. Checkpoints of a different run are removed."""
    if not root.is_dir():
        return None
    found = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    if not found:
        return None
    try:
        old_fp = json.loads((found[-1] / "state.json").read_text()).get("fingerprint")
    except json.JSONDecodeError:
        old_fp = None
    if old_fp != fp:
        log.warning("checkpoint %s belongs to a different run (config, model or data changed): starting afresh",
                    found[-1])
        shutil.rmtree(root, ignore_errors=True)
        return None
    return found[-1]


def load_checkpoint(path: Path, opt: torch.optim.Optimizer, scheduler: Any) -> tuple[dict[str, Any], dict, dict]:
    """Restore optimizer, scheduler and RNG states in place; return (state.json, adapter, best adapter)."""
    try:
        state = json.loads((path / "state.json").read_text())
        adapter = load_file(str(path / "adapter.safetensors"))
        best = load_file(str(path / "best.safetensors"))
        load_optimizer(opt, load_file(str(path / "optimizer.safetensors")), state["param_groups"])
        rng = load_file(str(path / "rng.safetensors"))
    except Exception as e:  # truncated by hand, disk errors: say which checkpoint
        raise PipError(f"unreadable recovery checkpoint {path}: {type(e).__name__}: {e}; delete it to restart") \
            from None
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(rng, state["python_random"])
    return state, adapter, best
