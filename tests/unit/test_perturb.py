import random


from pipsteps.perturb import build_lexicon, match_case, one_edit_variants, perturb_text


def test_one_edit_variants_cover_the_three_edit_kinds():
    assert "alter" in one_edit_variants("later")  # adjacent swap
    assert "nappy" in one_edit_variants("happy")  # replacement
    assert "ghost" in one_edit_variants("host")  # insertion
    assert "later" not in one_edit_variants("later")
    assert "hst" not in one_edit_variants("host")  # deletion is not one of the edits


def test_every_edit_is_a_real_word_one_edit_change(corpus, lexicon):
    rng = random.Random(0)
    for text in corpus[:200]:
        out, edits, _ = perturb_text(text, lexicon, 0.2, rng)
        rebuilt, pos = [], 0
        for e in edits:
            assert text[e.start:e.start + len(e.old)] == e.old
            assert e.new.lower() in lexicon, e
            assert e.new.lower() in one_edit_variants(e.old.lower()), e
            assert e.new != e.old
            rebuilt += [text[pos:e.start], e.new]
            pos = e.start + len(e.old)
        assert "".join(rebuilt) + text[pos:] == out


def test_achieved_rate_is_close_to_target(corpus, lexicon):
    rng = random.Random(1)
    for p in (0.1, 0.2, 0.4):
        edits = eligible = 0
        for text in corpus[:300]:
            _, e, n = perturb_text(text, lexicon, p, rng)
            edits, eligible = edits + len(e), eligible + n
        assert abs(edits / eligible - p) < 0.02, (p, edits / eligible)


def test_deterministic_under_seed(corpus, lexicon):
    text = " ".join(corpus[:5])
    a = perturb_text(text, lexicon, 0.2, random.Random(7))
    b = perturb_text(text, lexicon, 0.2, random.Random(7))
    c = perturb_text(text, lexicon, 0.2, random.Random(8))
    assert a == b
    assert a[0] != c[0]


def test_markup_and_short_words_are_never_edited():
    lexicon = build_lexicon(["unk sunk junk the then than N"] * 2)
    text = "the <unk> was N years old and <unk> the junk"
    for seed in range(20):
        out, edits, _ = perturb_text(text, lexicon, 1.0, random.Random(seed))
        assert out.count("<unk>") == 2
        assert " N " in out
        assert all(e.old not in ("unk", "N") for e in edits)


def test_capitalisation_is_kept():
    assert match_case("alter", "Later") == "Alter"
    assert match_case("alter", "LATER") == "ALTER"
    assert match_case("alter", "later") == "alter"
