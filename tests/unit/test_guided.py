"""The guided generator (llm_guided) on a tiny random model: its scores against a direct computation, the choice
as the argmax of the documented score, determinism, rate and real-word edits."""

import random

import pytest
import torch

from pipsteps.guided import AuxScorer, candidates, choose_edits, edit_score
from pipsteps.perturb import apply_edits, one_edit_variants
from pipsteps.surgery import load_model, load_tokenizer


@pytest.fixture(scope="module")
def aux(tiny_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads (and spins on a busy machine)
    model, tok = load_model(tiny_dir, torch.device("cpu")).eval(), load_tokenizer(tiny_dir)
    yield model, tok, AuxScorer(model, tok, torch.device("cpu"), right_context=4)
    torch.set_num_threads(threads)


def direct_scores(model, tok, text, edit, right=4):
    """F and M from two plain forward passes, of the clean and of the edited text (no cache, no packing)."""
    def encode(t):
        enc = tok(t, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = [tok.bos_token_id] + enc["input_ids"], [(0, 0)] + enc["offset_mapping"]
        with torch.no_grad():
            return ids, offs, model(torch.tensor([ids])).logits[0].log_softmax(-1)

    (ids, offs, lp), (ids2, offs2, lp2) = encode(text), encode(apply_edits(text, [edit]))
    a = next(t for t in range(1, len(ids)) if offs[t][1] > edit.start)
    b = next((t for t in range(a, len(ids)) if offs[t][0] >= edit.start + len(edit.old)), len(ids))
    b2 = next((t for t in range(a, len(ids2)) if offs2[t][0] >= edit.start + len(edit.new)), len(ids2))
    assert ids[:a] == ids2[:a] and ids[b:] == ids2[b2:]  # the same text before and after the word
    s, s2 = min(b + right, len(ids)), min(b2 + right, len(ids2))
    fluency = sum(float(lp2[t - 1, ids2[t]]) for t in range(a, s2)) - sum(float(lp[t - 1, ids[t]]) for t in range(a, s))
    p, q = lp[b - 1:s], lp2[b2 - 1:s2]
    return fluency, float((p.exp() * (p - q)).sum(-1).mean())


def test_scores_match_a_direct_computation(aux, corpus, lexicon):
    model, tok, scorer = aux
    text = corpus[3][:300]
    cands = candidates(text, lexicon, random.Random(0))[:10]
    assert len(cands) == 10
    small = AuxScorer(model, tok, torch.device("cpu"), right_context=4, chunk_tokens=12)  # several packed chunks
    for e, got, got_small in zip(cands, scorer.score(text, cands), small.score(text, cands)):
        want = direct_scores(model, tok, text, e)
        assert got == pytest.approx(want, abs=2e-4) and got_small == pytest.approx(want, abs=2e-4), e
        assert got[1] >= 0


def test_edit_score_ranks_fluent_edits_by_meaning_change_then_the_rest_by_fluency():
    keys = {name: edit_score(f, m, max_drop=5.0) for name, f, m in [
        ("fluent, small change", -1.0, 0.2), ("fluent, large change", -4.9, 1.5), ("disfluent, huge change", -9.0, 4.0),
        ("less disfluent", -6.0, 0.1)]}
    order = sorted(keys, key=keys.get, reverse=True)
    assert order == ["fluent, large change", "fluent, small change", "less disfluent", "disfluent, huge change"]


def test_the_chosen_edit_is_the_argmax_of_the_documented_score(aux, corpus, lexicon):
    model, tok, scorer = aux
    text = "The module is a local variable of that block, not a global name."
    cands = candidates(text, lexicon, random.Random(5), max_candidates=3)
    assert 5 <= len(cands) <= 20 and len({e.start for e in cands}) >= 3
    for max_drop in (1.0, 6.0, 30.0):
        chosen, eligible = choose_edits(text, lexicon, 1 / 9, random.Random(5), scorer, max_candidates=3,
                                        max_drop=max_drop)
        assert eligible == 9 and len(chosen) == 1  # round(9 / 9) = one edit
        direct = {e: direct_scores(model, tok, text, e) for e in cands}
        best = max(cands, key=lambda e: edit_score(*direct[e], max_drop))
        assert chosen[0].edit == best, max_drop
        assert (chosen[0].fluency, chosen[0].meaning) == pytest.approx(direct[best], abs=2e-4)


def test_deterministic_rate_and_real_word_edits(aux, corpus, lexicon):
    *_, scorer = aux
    texts = [p for p in corpus if len(p) > 200][:40]

    def run(seed):
        rng = random.Random(seed)
        return [choose_edits(t[:400], lexicon, 0.2, rng, scorer) for t in texts]

    a, b = run(1), run(1)
    assert a == b
    edits = eligible = 0
    for text, (chosen, n) in zip(texts, a):
        edits, eligible = edits + len(chosen), eligible + n
        assert len({s.edit.start for s in chosen}) == len(chosen)  # at most one edit per word
        for s in chosen:
            assert text[s.edit.start:s.edit.start + len(s.edit.old)] == s.edit.old
            assert s.edit.new.lower() in lexicon and s.edit.new.lower() in one_edit_variants(s.edit.old.lower())
            assert s.by == "guided" and s.meaning >= 0
    assert abs(edits / eligible - 0.2) <= 0.02, edits / eligible


def test_forced_edits_come_first_and_the_guided_generator_completes_the_window(aux, lexicon):
    """Generator llm: the instruction model's valid edits are kept (a seeded sample when there are more than the
    rate allows), scored like the others, and the guided candidates of the other words fill the window."""
    *_, scorer = aux
    text = "The module is a local variable of that block, not a global name."
    cands = candidates(text, lexicon, random.Random(0))
    by_word = {}
    for e in cands:
        by_word.setdefault(e.start, e)
    first, second, third = list(by_word.values())[:3]
    chosen, n = choose_edits(text, lexicon, 3 / 9, random.Random(0), scorer, forced=[second])
    assert n == 9 and len(chosen) == 3 and [s.by for s in chosen].count("llm") == 1
    assert next(s for s in chosen if s.by == "llm").edit == second
    direct = dict(zip(cands, scorer.score(text, cands)))
    assert (next(s for s in chosen if s.by == "llm").fluency,) == pytest.approx((direct[second][0],), abs=1e-4)
    many, _ = choose_edits(text, lexicon, 2 / 9, random.Random(1), scorer, forced=[first, second, third])
    assert len(many) == 2 and all(s.by == "llm" for s in many)
    again, _ = choose_edits(text, lexicon, 2 / 9, random.Random(1), scorer, forced=[first, second, third])
    assert again == many
