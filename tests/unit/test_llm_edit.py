"""The validator of the instruction model's rewrites (generator llm), on hand-written cases."""

import pytest

from pipsteps.llm_edit import validate
from pipsteps.perturb import Edit, apply_edits

LEXICON = frozenset("later alter happy nappy host ghost the then cat cats hat bat form from lost most unk sunk "
                    "tested nested hot".split())


def check(original, returned):
    ok, bad = validate(original, returned, LEXICON)
    return [(e.old, e.new) for e in ok], [(old, new, why) for old, new, why in bad]


@pytest.mark.parametrize("original,returned,edit", [
    ("We meet later today.", "We meet alter today.", ("later", "alter")),  # swap of two adjacent letters
    ("A happy dog.", "A nappy dog.", ("happy", "nappy")),  # replacement
    ("The host left.", "The ghost left.", ("host", "ghost")),  # insertion at the start
    ("Tested code runs.", "Nested code runs.", ("Tested", "Nested")),  # capital kept
    ("The host left.", "The GHOST left.", ("host", "ghost")),  # the window's capitalisation is kept
])
def test_accepts_one_character_real_word_edits(original, returned, edit):
    ok, bad = check(original, returned)
    assert ok == [edit] and bad == []


def test_accepted_edits_point_into_the_original_text():
    original = "Later, the host saw a happy cat."
    ok, bad = validate(original, "Alter, then ghost saw a nappy cats.", LEXICON)
    assert bad == []
    assert ok == [Edit(0, "Later", "Alter"), Edit(7, "the", "then"), Edit(11, "host", "ghost"),
                  Edit(22, "happy", "nappy"), Edit(28, "cat", "cats")]
    assert apply_edits(original, ok) == "Alter, then ghost saw a nappy cats."


@pytest.mark.parametrize("original,returned,reason", [
    ("We meet later today.", "We meet tlaer today.", "not one swap, replacement or insertion"),  # two edits
    ("The host left.", "The hot left.", "not one swap, replacement or insertion"),  # deletion (not an edit kind)
    ("The host left.", "The hust left.", "not a lexicon word"),  # one edit, but no real word
    ("The host left.", "The h_st left.", "not a word"),
    ("The host left.", "The h0st left.", "number changed"),
    ("Take 12 cats.", "Take 13 cats.", "number changed"),
    ("The host left.", "The host left!", "punctuation changed"),
    ("The host, left.", "The host; left.", "punctuation changed"),
    ("A <unk> hat.", "A <sunk> hat.", "markup changed"),
    ("The cat sat.", "The cat-s sat.", "words added or dropped"),
    ("The host left.", "The host has left.", "words added or dropped"),
    ("The host left.", "The left.", "words added or dropped"),
    ("The host left.", "The Host left.", "case change only"),
    ("A hat on my_hat.", "A hat on my_bat.", "word not editable"),  # inside an identifier
    ("An ox ran.", "An fox ran.", "word not editable"),  # shorter than min_len
])
def test_rejects_everything_else(original, returned, reason):
    ok, bad = check(original, returned)
    assert ok == [] and len(bad) == 1 and bad[0][2] == reason, bad


def test_valid_and_invalid_changes_are_judged_one_by_one():
    ok, bad = check("The host saw 3 cats, later.", "The ghost saw 4 cats; alter.")
    assert ok == [("host", "ghost"), ("later", "alter")]
    assert sorted(why for _, _, why in bad) == ["number changed", "punctuation changed"]


def test_unchanged_or_empty_reply_gives_no_edit():
    assert check("The host left.", "The host left.") == ([], [])
    ok, bad = check("The host left.", "")
    assert ok == [] and [why for _, _, why in bad] == ["words added or dropped"]
