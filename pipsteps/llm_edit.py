"""Instruction-model perturbed view (generator `llm`): an instruction-tuned aux model rewrites each window with
meaning-changing one-character real-word edits; every change it makes is validated, and the guided generator
(pipsteps.guided) completes the window.

`validate` aligns the model's rewrite with the window (difflib over word, number, markup and punctuation tokens)
and accepts a change only when it replaces one editable word of the window (alphabetic, at least `min_len` letters,
not markup) by a lexicon word one swap of adjacent letters, one replacement or one insertion away (the edits of
pipsteps.perturb; deletions are not used there either). Everything else the model changed (two edits in a word,
non-words, punctuation, numbers, markup, added or dropped words) is rejected and never reaches the perturbed view:
the accepted edits are applied to the original text, not the model's output.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import torch

from pipsteps.errors import PipError
from pipsteps.perturb import Edit, eligible_words, match_case, one_edit_variants

# words (letters, digits, underscore), markup such as <unk>, and single punctuation characters
TOKEN = re.compile(r"<[^<>\s]*>|\w+|[^\w\s]")
WORDLIKE = re.compile(r"\w+")

DEFAULT_PROMPT = (
    "Change the meaning of the text below by changing {n} of its words. Change each of these words by one letter "
    "so that it becomes a different real English word: swap two neighbouring letters, replace one letter or add "
    "one letter (for example later -> alter, happy -> nappy, host -> ghost). Keep every other word, number and "
    "punctuation mark exactly as it is. Reply with the changed text only.\n\nText:\n{text}")


def _reason(old: str, new: str, editable: bool, lexicon: frozenset[str]) -> str | None:
    """Why replacing the window token `old` by `new` is not a valid edit (None: valid)."""
    if old.startswith("<"):
        return "markup changed"
    if any(c.isdigit() for c in old + new):
        return "number changed"
    if not (WORDLIKE.fullmatch(old) and WORDLIKE.fullmatch(new)):
        return "punctuation changed"
    if not editable:
        return "word not editable"
    if not new.isalpha():
        return "not a word"
    if new.lower() == old.lower():
        return "case change only"
    if new.lower() not in one_edit_variants(old.lower()):
        return "not one swap, replacement or insertion"
    if new.lower() not in lexicon:
        return "not a lexicon word"
    return None


def validate(original: str, returned: str, lexicon: frozenset[str],
             min_len: int = 3) -> tuple[list[Edit], list[tuple[str, str, str]]]:
    """(accepted edits of `original`, in text order; rejected changes as (old, new, reason))."""
    src = [(m.start(), m.group()) for m in TOKEN.finditer(original)]
    dst = [m.group() for m in TOKEN.finditer(returned)]
    editable = {m.start(): m.group() for m in eligible_words(original, min_len)}
    ok: list[Edit] = []
    bad: list[tuple[str, str, str]] = []
    ops = difflib.SequenceMatcher(None, [t for _, t in src], dst, autojunk=False).get_opcodes()
    for op, i1, i2, j1, j2 in ops:
        if op == "equal":
            continue
        if op != "replace" or i2 - i1 != j2 - j1:
            bad.append((" ".join(t for _, t in src[i1:i2]), " ".join(dst[j1:j2]), "words added or dropped"))
            continue
        for (start, old), new in zip(src[i1:i2], dst[j1:j2]):
            why = _reason(old, new, editable.get(start) == old, lexicon)
            if why:
                bad.append((old, new, why))
            else:
                ok.append(Edit(start, old, match_case(new.lower(), old)))
    return ok, bad


def rewrite(model: Any, tok: Any, device: torch.device, prompt: str, text: str, n: int) -> str:
    """The instruction model's rewrite of `text` asked to change `n` words (greedy decoding, chat template)."""
    if not getattr(tok, "chat_template", None):
        raise PipError("perturbation.generator llm needs an instruction-tuned aux model with a chat template "
                       "(perturbation.aux_model has none); use llm_guided with a base model")
    content = prompt.replace("{n}", str(n)).replace("{text}", text)
    enc = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                  return_dict=True, return_tensors="pt")
    ids = enc["input_ids"].to(device)
    budget = int(1.5 * len(tok(text, add_special_tokens=False)["input_ids"])) + 16
    with torch.no_grad():
        out = model.generate(ids, attention_mask=enc["attention_mask"].to(device), max_new_tokens=budget,
                             do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
