"""Step: perplexity of one model stage (dense or pruned) on WikiText-2 / PTB style text (docs/evaluation.md).

    PPL = exp( Σ_chunks Σ_t NLL(x_t | x_<t) / #predicted tokens )

over non-overlapping chunks of each length in `seq_lens` (128: LLM-Pruner/FLAP tables; 2048 or the model maximum:
SliceGPT/Wanda tables). Rows are joined with "\\n\\n" and tokenized once with the model's tokenizer defaults;
`max_tokens` caps the token stream for CPU runs (0 = whole text). A length above the model's
max_position_embeddings is measured at that maximum and stored under the length actually used (`seq_len_capped`
records which requested lengths were capped), never under the requested one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipsteps import cli
from pipsteps.compute import ComputeConfig
from pipsteps.errors import PipError
from pipsteps.files import write_json
from pipsteps.io import Timer, count_params, resolve_device, resolve_dtype, set_threads
from pipsteps.surgery import load_model, load_tokenizer
from pipsteps.textdata import read_rows

log = logging.getLogger("pipsteps.evaluate")


@dataclass(frozen=True)
class EvalConfig(ComputeConfig):
    datasets: str = field(default='[{"name": "heldout", "source": "embedded:heldout"}]',
                          metadata={"help": "JSON list of {name, source, format, split, text_field, dataset_config}"})
    seq_lens: tuple[int, ...] = field(default=(128, 2048), metadata={"help": "chunk lengths (capped at model max)"})
    max_tokens: int = field(default=0, metadata={"help": "token cap per dataset (0 = all)"})
    batch_tokens: int = field(default=4096, metadata={"help": "tokens per forward batch"})


@torch.no_grad()
def perplexity(model: torch.nn.Module, ids: torch.Tensor, seq_len: int, batch_tokens: int = 4096,
               desc: str = "ppl") -> tuple[float, int]:
    """Perplexity over non-overlapping `seq_len` chunks of the 1-D token tensor `ids`; returns (ppl, #predicted)."""
    n_chunks = ids.numel() // seq_len
    if n_chunks == 0:
        raise PipError(f"{desc}: text has {ids.numel()} tokens, fewer than one chunk of {seq_len}")
    chunks = ids[: n_chunks * seq_len].view(n_chunks, seq_len)  # (n_chunks, seq_len)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for batch in tqdm(torch.split(chunks, max(1, batch_tokens // seq_len)), desc=desc, unit="batch"):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # (b, L-1, vocab)
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
        count += batch[:, 1:].numel()
    return math.exp(nll / count), count


def run(cfg: EvalConfig, model_dir: Path) -> dict[str, Any]:
    set_threads(cfg.threads)
    device = resolve_device(cfg.device, require_gpu=cfg.require_gpu)
    try:
        specs = json.loads(cfg.datasets)
    except json.JSONDecodeError as e:
        raise PipError(f"--datasets is not valid JSON: {e}") from None
    if not specs:
        raise PipError("no evaluation datasets given")
    with Timer() as t:
        # read every text first, so a missing file fails before the model is loaded
        rows = {d["name"]: read_rows(d["source"], text_field=d.get("text_field", "text"), fmt=d.get("format", "lines"),
                                     dataset_config=d.get("dataset_config"), split=d.get("split", "test"))
                for d in specs}
        tok = load_tokenizer(model_dir)
        model = load_model(model_dir, device, resolve_dtype(cfg.dtype, device), device_map=cfg.device_map)
        max_len = getattr(model.config, "max_position_embeddings", None) or max(cfg.seq_lens)
        capped = {str(L): max_len for L in cfg.seq_lens if L > max_len}
        if capped:
            log.warning("seq_lens %s exceed the model's max_position_embeddings %d: measured at %d and stored "
                        "under %d", ", ".join(capped), max_len, max_len, max_len)
        lens = list(dict.fromkeys(min(L, max_len) for L in cfg.seq_lens))  # lengths actually used, once each
        ppl: dict[str, dict[str, float]] = {}
        tokens: dict[str, int] = {}
        for name, r in rows.items():
            ids = torch.tensor(tok("\n\n".join(r))["input_ids"], dtype=torch.int64)
            if cfg.max_tokens:
                ids = ids[: cfg.max_tokens]
            tokens[name] = int(ids.numel())
            ppl[name] = {}
            for L in lens:
                value, _ = perplexity(model, ids, L, cfg.batch_tokens, desc=f"{name}@{L}")
                ppl[name][str(L)] = value
                log.info("%s: PPL@%d = %.3f (%d tokens)", name, L, value, ids.numel())
    params = count_params(model)
    return {"ppl": ppl, "seq_len_capped": capped, "tokens": tokens, "params_total": params["total"],
            "params_non_embedding": params["non_embedding"], "num_layers": model.config.num_hidden_layers,
            "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb, "device": str(device)}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, type=Path, help="model directory to evaluate")
        p.add_argument("--stage", default="", help="stage name recorded in the metrics (dense, pruned variant)")
        p.add_argument("--metrics", required=True, type=Path, help="output metrics JSON")

    cfg, ns = cli.parse(EvalConfig, argv, __doc__.splitlines()[0], extra)
    metrics = run(cfg, ns.model)
    write_json(ns.metrics, {"config": asdict(cfg), "stage": ns.stage, **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
