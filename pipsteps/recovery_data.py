"""Training data for LoRA recovery (docs/recovery.md): instruction data or plain text, tokenized and split.

Sources: a Hugging Face dataset (default `yahma/alpaca-cleaned`), a local `.json` (a list of objects, or JSON lines)
or `.jsonl` with instruction/input/output fields, or plain text (`embedded:calibration`, `embedded:heldout`, a
`.txt` with one row per line, or the `text_field` of JSON rows / dataset rows).

- instruction data: the Alpaca prompt (LLM-Pruner's template) + the response, truncated to `cutoff` tokens, EOS
  appended when it fits. With `train_on_inputs=False` the loss covers the response tokens only.
- plain text: rows joined with a blank line, tokenized once and cut into non-overlapping `cutoff`-token windows
  (causal-LM tuning; the loss covers every token; the last partial window is dropped).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipsteps.errors import PipError
from pipsteps.files import read_utf8
from pipsteps.textdata import load_hf, read_rows

log = logging.getLogger("pipsteps.recovery_data")
FORMATS = ("auto", "instruction", "text")
IGNORE = -100  # label of tokens without loss (prompt, padding)
PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss

    @property
    def n_targets(self) -> int:
        """Tokens that are predicted with a loss (labels are shifted by one inside the model's loss)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


def is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".txt", ".json", ".jsonl")) or \
        Path(source).expanduser().exists()


def read_records(source: str, *, dataset_config: str | None = None, split: str = "train",
                 max_examples: int = 0) -> tuple[list[Any], str]:
    """Rows of `source` as (records, kind): dicts from JSON/JSONL/HF datasets (kind "records"), or strings from
    embedded text and .txt files (kind "text")."""
    if source.startswith("embedded:") or (is_local(source) and Path(source).suffix == ".txt"):
        rows: list[Any] = read_rows(source)
        kind = "text"
    elif is_local(source):
        rows, kind = _json_records(source), "records"
    else:
        rows, kind = _hf_records(source, dataset_config, split), "records"
    if not rows:
        raise PipError(f"recovery data {source!r} is empty")
    return (rows[:max_examples] if max_examples else rows), kind


def _json_records(source: str) -> list[Any]:
    path = Path(source).expanduser()
    raw = read_utf8(path, source, missing="recovery data file not found")
    if path.suffix == ".json":
        try:
            data = json.loads(raw)
            if not isinstance(data, list):
                raise PipError(f"{source}: expected a JSON list of objects, got {type(data).__name__}")
            return data
        except json.JSONDecodeError:
            pass  # JSON lines saved as .json
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise PipError(f"{source}:{n}: not valid JSON ({e.msg})") from None
    return rows


def _hf_records(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    ds = load_hf(name, config, split, local="a local .json/.jsonl/.txt path or embedded:calibration")
    return [dict(r) for r in ds]


def detect_format(records: list[Any], kind: str, fmt: str) -> str:
    """`auto`: instruction when the rows are objects with `instruction` and `output`, else text."""
    if fmt not in FORMATS:
        raise PipError(f"unknown recovery data format {fmt!r}; allowed: {', '.join(FORMATS)}")
    looks_instruction = kind == "records" and isinstance(records[0], dict) and \
        {"instruction", "output"} <= set(records[0])
    if fmt == "auto":
        return "instruction" if looks_instruction else "text"
    if fmt == "instruction" and not looks_instruction:
        raise PipError("recovery data format 'instruction' needs rows with 'instruction' and 'output' fields")
    return fmt


def text_rows(records: list[Any], kind: str, text_field: str) -> list[str]:
    if kind == "text":
        return [str(r) for r in records]
    out = []
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict) or text_field not in r:
            raise PipError(f"recovery data row {n}: missing text field {text_field!r}")
        out.append(str(r[text_field]))
    return out


def prompt(row: dict[str, Any]) -> str:
    template = PROMPT_INPUT if str(row.get("input") or "").strip() else PROMPT_NO_INPUT
    return template.format(instruction=row["instruction"], input=row.get("input") or "")


def instruction_examples(tok: Any, rows: list[dict[str, Any]], cutoff: int, train_on_inputs: bool) -> list[Example]:
    """LLM-Pruner's `generate_and_tokenize_prompt`: prompt + output, truncated, EOS when it fits, masked prompt."""
    out, dropped = [], 0
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "instruction" not in row or "output" not in row:
            raise PipError(f"recovery data row {n}: needs 'instruction' and 'output' fields")
        p = prompt(row)
        ids = tok(p + str(row["output"]), truncation=True, max_length=cutoff)["input_ids"]
        if tok.eos_token_id is not None and ids[-1] != tok.eos_token_id and len(ids) < cutoff:
            ids = ids + [tok.eos_token_id]
        n_prompt = 0 if train_on_inputs else len(tok(p, truncation=True, max_length=cutoff)["input_ids"])
        ex = Example(ids, [IGNORE] * n_prompt + ids[n_prompt:])
        if ex.n_targets == 0:
            dropped += 1  # the response was truncated away entirely
            continue
        out.append(ex)
    if dropped:
        log.warning("dropped %d example(s) whose response does not fit in cutoff=%d tokens", dropped, cutoff)
    return out


def text_examples(tok: Any, rows: list[str], cutoff: int) -> list[Example]:
    ids = tok("\n\n".join(rows))["input_ids"]
    return [Example(ids[i:i + cutoff], ids[i:i + cutoff]) for i in range(0, len(ids) - cutoff + 1, cutoff)]


def build_examples(tok: Any, source: str, *, fmt: str = "auto", dataset_config: str | None = None,
                   split: str = "train", text_field: str = "text", cutoff: int = 256, train_on_inputs: bool = False,
                   max_examples: int = 0) -> tuple[list[Example], str]:
    """Tokenized examples and the format used."""
    records, kind = read_records(source, dataset_config=dataset_config, split=split, max_examples=max_examples)
    fmt = detect_format(records, kind, fmt)
    if fmt == "instruction":
        return instruction_examples(tok, records, cutoff, train_on_inputs), fmt
    return text_examples(tok, text_rows(records, kind, text_field), cutoff), fmt


def split_examples(examples: list[Example], val_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded shuffle, then `val_size` held-out examples (capped at a fifth of the data) and the rest for training."""
    if len(examples) < 2:
        raise PipError(f"recovery data gives {len(examples)} example(s); need at least 2 (more data; text needs "
                       "cutoff tokens per example, instruction rows a cutoff longer than their prompt)")
    n_val = min(val_size, len(examples) // 5) or 1
    if n_val < val_size:
        log.warning("val_size=%d capped at %d (a fifth of the %d examples)", val_size, n_val, len(examples))
    perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [examples[i] for i in perm[n_val:]], [examples[i] for i in perm[:n_val]]


def collate(batch: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (b, L) int64 input_ids / attention_mask / labels (IGNORE on padding)."""
    L = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.int64)
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.int64)
    mask = torch.zeros((len(batch), L), dtype=torch.int64)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.int64)
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.int64)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
