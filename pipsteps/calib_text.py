"""The calibration text and its windows, shared by the calibration step (pipsteps.calibration) and the aux-model
step (pipsteps.aux_edits), which must see the same windows in the same seeded order: the settings (CalibConfig),
the corpus and lexicon, the word-snapped windows and their seeded order, and the settings check."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipsteps.errors import PipError
from pipsteps.perturb import build_lexicon
from pipsteps.textdata import read_rows

AUX_GENERATORS = ("llm_guided", "llm")  # their edits come from the aux-model step (pipsteps.aux_edits)
GENERATORS = ("rule_based", "token_noise", *AUX_GENERATORS)


@dataclass(frozen=True)
class CalibConfig:
    source: str = field(default="embedded:calibration",
                        metadata={"help": "embedded:calibration, .txt/.jsonl, or HF dataset"})
    dataset_config: str | None = field(default=None, metadata={"help": "HF dataset config name"})
    split: str = field(default="train", metadata={"help": "HF dataset split"})
    text_field: str = field(default="text", metadata={"help": "text field of HF / .jsonl rows"})
    n_samples: int = field(default=8, metadata={"help": "number of calibration windows n"})
    seq_len: int = field(default=64, metadata={"help": "tokens per window L"})
    seed: int = field(default=0, metadata={"help": "seed for window choice and perturbation"})
    generator: str = field(default="rule_based", metadata={"help": ", ".join(GENERATORS)})
    rate: float = field(default=0.2, metadata={"help": "fraction p of eligible words (tokens) to edit"})
    draws: int = field(default=1, metadata={"help": "perturbations per window k (perturbed view: n*k rows)"})
    min_len: int = field(default=3, metadata={"help": "minimum length of an editable word"})
    min_freq: int = field(default=2, metadata={"help": "minimum corpus frequency of a lexicon word"})
    wordlist: str | None = field(default=None, metadata={"help": "optional extra lexicon, one word per line"})


def windows(corpus: str, tok: Any, span_tokens: int) -> list[tuple[int, int]]:
    """Character spans of consecutive `span_tokens`-token windows, snapped to whitespace (whole words only)."""
    offsets = tok(corpus, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = []
    for k in range(len(offsets) // span_tokens):
        s, e = offsets[k * span_tokens][0], offsets[(k + 1) * span_tokens - 1][1]
        if k > 0:  # start after the first whitespace so no word is cut
            s = next((i + 1 for i in range(s, e) if corpus[i].isspace()), e)
        e = max((i for i in range(s, e) if corpus[i].isspace()), default=e)
        spans.append((s, e))
    return spans


def load_text(cfg: CalibConfig) -> tuple[str, frozenset[str]]:
    """The corpus (non-empty rows joined with a blank line) and the lexicon of the real-word edits."""
    rows = [r for r in read_rows(cfg.source, text_field=cfg.text_field, dataset_config=cfg.dataset_config,
                                 split=cfg.split) if r.strip()]
    extra = Path(cfg.wordlist).read_text().split() if cfg.wordlist else []
    return "\n\n".join(r.strip() for r in rows), build_lexicon(rows, cfg.min_freq, extra)


def candidate_windows(cfg: CalibConfig, tok: Any, corpus: str) -> Iterator[tuple[int, str, list[int], int]]:
    """The windows in seeded order, those with at least seq_len tokens: (window index k, text, its first seq_len
    token ids, cut). Only words before character `cut` (inside the first seq_len tokens) are edited."""
    margin = max(8, cfg.seq_len // 4)
    spans = windows(corpus, tok, cfg.seq_len + margin)
    if len(spans) < cfg.n_samples:
        raise PipError(f"calibration text too short: {cfg.source} gives {len(spans)} windows of "
                       f"{cfg.seq_len}+{margin} tokens, need n_samples={cfg.n_samples}")
    rng = random.Random(cfg.seed)
    for k in rng.sample(range(len(spans)), len(spans)):
        text = corpus[slice(*spans[k])]
        enc = tok(text, return_offsets_mapping=True)
        c_ids = enc["input_ids"][: cfg.seq_len]
        if len(c_ids) < cfg.seq_len:
            continue
        # edit only words inside the first seq_len tokens (the rest is cut off); keep the tail as is
        cut = enc["offset_mapping"][cfg.seq_len - 1][1]
        yield k, text, c_ids, max((i for i in range(cut) if text[i].isspace()), default=0)


def check_config(cfg: CalibConfig) -> None:
    if cfg.n_samples < 1 or cfg.seq_len < 8 or cfg.draws < 1:
        raise PipError(f"calibration needs n_samples >= 1, seq_len >= 8 and draws >= 1 (got {cfg.n_samples}, "
                       f"{cfg.seq_len}, {cfg.draws})")
    if cfg.generator not in GENERATORS:
        raise PipError(f"unknown perturbation generator {cfg.generator!r}; allowed: {', '.join(GENERATORS)}")
    if cfg.generator in AUX_GENERATORS and cfg.draws != 1:
        raise PipError(f"perturbation.generator {cfg.generator} is deterministic: it needs perturbation.draws 1 "
                       f"(got {cfg.draws}); use rule_based for several draws")
