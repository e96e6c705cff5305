"""Rule-based perturbed view (docs/perturbation.md): meaning-changing one-character edits that yield another real word.
The lexicon machinery here (neighbours, eligible words, apply_edits) is shared by the aux-model generators
(pipsteps.guided, pipsteps.llm_edit).

Edits: swap two adjacent letters ("later"→"alter"), replace one letter ("happy"→"nappy"), insert one letter
("host"→"ghost"). The lexicon is the lower-cased words of the calibration corpus seen at least `min_freq` times,
plus an optional word list. Words are visited in a seeded random order and edited (original capitalisation kept)
until a fraction `rate` of the eligible words (alphabetic, length >= `min_len`) is changed; words without a real-word
neighbour are skipped, so the achieved rate is below `rate` only when too few words have neighbours.
Corpus markup such as PTB's `<unk>` is never edited.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

WORD = re.compile(r"(?<![\w<])[A-Za-z]+(?![\w>])")  # alphabetic words, not inside <markup> or alnum tokens
LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class Edit:
    start: int  # character offset in the clean text
    old: str
    new: str


def build_lexicon(texts: Iterable[str], min_freq: int = 2, extra_words: Iterable[str] = ()) -> frozenset[str]:
    counts = Counter(m.group().lower() for t in texts for m in WORD.finditer(t))
    return frozenset({w for w, c in counts.items() if c >= min_freq} | {w.lower() for w in extra_words})


def one_edit_variants(word: str) -> set[str]:
    """All strings one adjacent swap, one replacement or one insertion away from `word` (lower case)."""
    swaps = {word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1)}
    replaces = {word[:i] + c + word[i + 1:] for i in range(len(word)) for c in LETTERS}
    inserts = {word[:i] + c + word[i:] for i in range(len(word) + 1) for c in LETTERS}
    return (swaps | replaces | inserts) - {word}


def neighbours(word: str, lexicon: frozenset[str]) -> list[str]:
    return sorted(one_edit_variants(word.lower()) & lexicon)


def match_case(new: str, old: str) -> str:
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[0].isupper():
        return new[0].upper() + new[1:]
    return new


def eligible_words(text: str, min_len: int = 3) -> list[re.Match]:
    """The editable words of `text`: alphabetic, at least `min_len` letters, not inside markup or alnum tokens."""
    return [m for m in WORD.finditer(text) if len(m.group()) >= min_len]


def apply_edits(text: str, edits: list[Edit]) -> str:
    """`text` with every edit applied (edits sorted by position, non-overlapping)."""
    out, pos = [], 0
    for e in edits:
        out += [text[pos:e.start], e.new]
        pos = e.start + len(e.old)
    out.append(text[pos:])
    return "".join(out)


def perturb_text(text: str, lexicon: frozenset[str], rate: float, rng: random.Random,
                 min_len: int = 3) -> tuple[str, list[Edit], int]:
    """Return (perturbed text, edits, number of eligible words)."""
    eligible = eligible_words(text, min_len)
    target = round(rate * len(eligible))
    order = list(range(len(eligible)))
    rng.shuffle(order)
    edits: list[Edit] = []
    for i in order:
        if len(edits) >= target:
            break
        m = eligible[i]
        options = neighbours(m.group(), lexicon)
        if options:
            edits.append(Edit(m.start(), m.group(), match_case(rng.choice(options), m.group())))
    edits.sort(key=lambda e: e.start)
    return apply_edits(text, edits), edits, len(eligible)


def token_noise(ids: list[int], rate: float, vocab_size: int, rng: random.Random) -> list[int]:
    """Ablation generator: replace a fraction `rate` of the tokens with random vocabulary ids."""
    out = list(ids)
    for i in rng.sample(range(len(ids)), round(rate * len(ids))):
        out[i] = rng.randrange(vocab_size)
    return out
