"""Guided perturbed view (generator `llm_guided`): an auxiliary causal LM picks, among the real-word one-character
edits of a window, the edits that change its meaning most while the text stays fluent.

Candidates: every eligible word of the window (pipsteps.perturb: alphabetic, at least `min_len` letters, not
markup) with its lexicon neighbours (swap, replace, insert), at most `max_candidates` per word (a seeded sample when
a word has more). For a candidate that turns word w into w', with L the text before the word and R the
`right_context` tokens after it, the aux model gives two scores:

- fluency F = log P(w' R | L) - log P(w R | L), in nats: how much less likely the edited text is than the clean one
  (0 = as likely; more negative = less fluent);
- meaning change M = mean KL(P_clean(next token) || P_edited(next token)) over the len(R) + 1 positions from the end
  of the word to the end of R, in nats: how far the edit moves the model's predictions of the text that follows.

`edit_score` turns the two into the ranking key; the window keeps the best candidate of each word and then the
best words, up to round(rate x eligible words), like the rule-based generator. Each candidate is scored against the
clean window (independently of the other edits). Cost: one forward pass of the window, then one small batch per
word (its candidates, about len(w') + len(R) tokens each) that reuses the window's key/value cache of L.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from pipsteps.perturb import Edit, eligible_words, match_case, neighbours


@dataclass(frozen=True)
class Scored:
    edit: Edit
    fluency: float  # F, nats (<= 0 when the edit makes the text less likely)
    meaning: float  # M, nats (>= 0)
    by: str = "guided"  # "guided", or "llm" for an edit the instruction model proposed (generator llm)


def edit_score(fluency: float, meaning: float, max_drop: float) -> tuple[int, float]:
    """Ranking key of a candidate edit, larger is better. Fluent edits (F >= -max_drop) come first, ordered by their
    meaning change M; the other edits come after them, least disfluent first (they only complete a window that
    has too few fluent candidates to reach the rate)."""
    return (1, meaning) if fluency >= -max_drop else (0, fluency)


class AuxScorer:
    """Fluency and meaning-change scores of candidate edits of one text, from an auxiliary causal LM.

    One forward pass of the clean text fills the key/value cache; the candidates then go through in packed
    chunks of at most `chunk_tokens` tokens, one row, each candidate's tokens (edited word + R) attending to the
    cached clean text before its word and to its own earlier tokens (a 4D attention mask; position ids continue
    from the word's position), so the text before a word is never recomputed."""

    def __init__(self, model: Any, tok: Any, device: torch.device, right_context: int = 4, chunk_tokens: int = 1024):
        self.model, self.tok, self.device, self.right, self.chunk = model, tok, device, right_context, chunk_tokens
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if start is None:
            raise ValueError("the aux tokenizer has neither a BOS nor an EOS token to start the text with")
        self.start = [start]
        self.scored = 0  # candidates scored so far

    def _sequences(self, text: str, ids: list[int], offs: list[tuple[int, int]],
                   edits: Sequence[Edit]) -> list[tuple[int, int, list[int]]]:
        """Per edit: (a, b, tokens) with [a, b) the clean tokens of the word and tokens = edited word + R."""
        out = []
        for e in edits:
            end = e.start + len(e.old)
            a = next(t for t in range(1, len(ids)) if offs[t][1] > e.start)
            b = next((t for t in range(a + 1, len(ids)) if offs[t][0] >= end), len(ids))
            piece = text[offs[a][0]:e.start] + e.new + text[end:offs[b - 1][1]]
            out.append((a, b, list(self.tok(piece, add_special_tokens=False)["input_ids"]) + ids[b:b + self.right]))
        return out

    @torch.no_grad()
    def score(self, text: str, edits: Sequence[Edit]) -> list[tuple[float, float]]:
        """(fluency F, meaning change M) of each edit of `text`, each applied alone to the clean text."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = self.start + list(enc["input_ids"])
        offs = [(0, 0)] + [tuple(o) for o in enc["offset_mapping"]]
        n = len(ids)
        out = self.model(torch.tensor([ids], device=self.device), use_cache=True)
        cache, lp = out.past_key_values, out.logits[0].float().log_softmax(-1)  # lp[t] predicts token t + 1
        seqs = self._sequences(text, ids, offs, edits)
        res: list[tuple[float, float]] = []
        i = 0
        while i < len(seqs):
            j, width = i, 0
            while j < len(seqs) and (j == i or width + len(seqs[j][2]) <= self.chunk):
                width, j = width + len(seqs[j][2]), j + 1
            lpc = self._forward_packed(cache, n, seqs[i:j])
            pos = 0
            for a, b, s in seqs[i:j]:
                stop = min(b + self.right, n)
                n_new = len(s) - (stop - b)
                ll = float(lp[a - 1, s[0]]) + float(lpc[pos + torch.arange(len(s) - 1), s[1:]].sum())
                ref_ll = float(lp[torch.arange(a - 1, stop - 1), ids[a:stop]].sum())
                ref = lp[b - 1:stop]  # len(R) + 1 next-token distributions: after the word and after each R token
                kl = (ref.exp() * (ref - lpc[pos + n_new - 1:pos + len(s)])).sum(-1).mean()
                res.append((ll - ref_ll, float(kl)))
                pos += len(s)
            i = j
        self.scored += len(edits)
        return res

    def _forward_packed(self, cache: Any, n: int, seqs: list[tuple[int, int, list[int]]]) -> torch.Tensor:
        """Log-probabilities (S, V) of the packed candidate tokens given the cached clean text of n tokens."""
        width = sum(len(s) for _, _, s in seqs)
        dtype = next(self.model.parameters()).dtype
        mask = torch.full((width, n + width), torch.finfo(dtype).min, dtype=dtype)
        tokens, positions, pos = [], [], 0
        for a, _, s in seqs:
            mask[pos:pos + len(s), :a] = 0
            mask[pos:pos + len(s), n + pos:n + pos + len(s)].triu_(1)
            tokens += s
            positions += range(a, a + len(s))
            pos += len(s)
        out = self.model(torch.tensor([tokens], device=self.device), past_key_values=cache, use_cache=True,
                         attention_mask=mask[None, None].to(self.device),
                         position_ids=torch.tensor([positions], device=self.device))
        cache.crop(-width)  # drop the candidates' keys and values again
        return out.logits[0].float().log_softmax(-1)


def candidates(text: str, lexicon: frozenset[str], rng: random.Random, min_len: int = 3,
               max_candidates: int = 4) -> list[Edit]:
    """The real-word one-character edits of the eligible words, at most `max_candidates` per word."""
    out = []
    for m in eligible_words(text, min_len):
        options = neighbours(m.group(), lexicon)
        if len(options) > max_candidates:
            options = sorted(rng.sample(options, max_candidates))
        out += [Edit(m.start(), m.group(), match_case(o, m.group())) for o in options]
    return out


def choose_edits(text: str, lexicon: frozenset[str], rate: float, rng: random.Random, scorer: AuxScorer, *,
                 min_len: int = 3, max_candidates: int = 4, max_drop: float = 6.0,
                 forced: Sequence[Edit] = ()) -> tuple[list[Scored], int]:
    """(chosen edits with their scores, in text order; number of eligible words). `forced` edits (the valid edits
    of the instruction model, generator llm) are kept first; the guided candidates of the other words complete
    the window up to round(rate x eligible words)."""
    n_eligible = len(eligible_words(text, min_len))
    target = round(rate * n_eligible)
    forced = list(forced)
    if len(forced) > target:
        forced = sorted(rng.sample(forced, target), key=lambda e: e.start)
    taken = {e.start for e in forced}
    pool = [e for e in candidates(text, lexicon, rng, min_len, max_candidates) if e.start not in taken]
    if target == 0 or not (forced or pool):
        return [], n_eligible
    scores = scorer.score(text, forced + pool)
    chosen = [Scored(e, f, m, "llm") for e, (f, m) in zip(forced, scores)]
    best: dict[int, tuple[tuple[int, float], Scored]] = {}  # word start -> its best candidate
    for e, (f, m) in zip(pool, scores[len(forced):]):
        key = edit_score(f, m, max_drop)
        if e.start not in best or key > best[e.start][0]:
            best[e.start] = (key, Scored(e, f, m))
    ranked = sorted(best.values(), key=lambda kv: kv[0], reverse=True)  # stable: ties keep text order
    chosen += [s for _, s in ranked[:target - len(chosen)]]
    return sorted(chosen, key=lambda s: s.edit.start), n_eligible
