"""Text sources shared by calibration and evaluation: the embedded default, local .txt/.jsonl files, HF datasets.

The embedded default is the English prose of CPython's own documentation that ships with every Python install in
`pydoc_data.topics` (the "Python Language Reference" topics behind `help("assignment")` etc., about 460 kB).
Indented code blocks and grammar lines are dropped, leaving prose paragraphs. Topics are split deterministically in
two disjoint parts: `embedded:calibration` (2 of every 3 topics) and `embedded:heldout` (the rest), so the default
evaluation never sees the calibration text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipsteps.errors import PipError
from pipsteps.files import read_utf8

EMBEDDED = ("embedded:calibration", "embedded:heldout")


def embedded_paragraphs(part: str) -> list[str]:
    from pydoc_data.topics import topics

    if part not in ("calibration", "heldout"):
        raise PipError(f"unknown embedded text part {part!r}; use embedded:calibration or embedded:heldout")
    keys = sorted(topics)
    chosen = [k for i, k in enumerate(keys) if (i % 3 == 2) == (part == "heldout")]
    paragraphs: list[str] = []
    for key in chosen:
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.split("\n")
            if any(line.startswith((" ", "\t", "*", "=", "-")) for line in lines):
                continue  # code, grammar, tables, section underlines
            text = " ".join(line.strip() for line in lines).strip()
            letters = sum(c.isalpha() for c in text)
            if len(text.split()) >= 8 and letters > 0.7 * len(text.replace(" ", "")):
                paragraphs.append(text)
    return paragraphs


def wikitext_rows(raw: str) -> list[str]:
    """Rows of a HF `wikitext` split saved as rows joined by "\\n" (docs/configuration.md)."""
    pieces, rows, i = raw.split("\n"), [], 0
    while i < len(pieces):
        if pieces[i] == "":
            rows.append("")
            i += 1
        else:
            rows.append(pieces[i] + "\n")
            i += 2  # the empty piece after a non-empty row belongs to it
    return rows


def read_rows(source: str, *, text_field: str = "text", fmt: str = "lines", dataset_config: str | None = None,
              split: str = "train") -> list[str]:
    """Rows of text from `source`: `embedded:<part>`, a .txt (one row per line, or `fmt=wikitext` rows),
    a .jsonl (`text_field` of each line), or a Hugging Face dataset name."""
    if source.startswith("embedded:"):
        return embedded_paragraphs(source.split(":", 1)[1])
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json") or path.exists() or source.startswith((".", "/", "~")):
        raw = read_utf8(path, source)
        if path.suffix == ".jsonl":
            return _jsonl_rows(raw, source, text_field)
        if fmt == "wikitext":
            return wikitext_rows(raw)
        return [line.strip() for line in raw.split("\n") if line.strip()]
    return _hf_rows(source, dataset_config, split, text_field)


def _jsonl_rows(raw: str, source: str, field: str) -> list[str]:
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PipError(f"{source}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or field not in obj:
            raise PipError(f"{source}:{n}: missing text field {field!r}")
        rows.append(str(obj[field]))
    return rows


def load_hf(name: str, config: str | None, split: str, local: str = "a local .txt/.jsonl path") -> Any:
    """A Hugging Face dataset split, or one line naming it and the offline alternative (`local`)."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:  # hub unreachable, unknown name, ...
        raise PipError(f"could not load dataset {name!r} (config={config}, split={split}): "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} — "
                       f"offline? give {local} instead") from None


def _hf_rows(name: str, config: str | None, split: str, field: str) -> list[str]:
    ds = load_hf(name, config, split)
    if field not in ds.column_names:
        raise PipError(f"dataset {name!r} has no field {field!r}; fields: {ds.column_names}")
    return [str(t) for t in ds[field]]
