"""The seven zero-shot tasks as lm-eval task configs that read local files (offline machines; docs/evaluation.md).

Each loader turns one local format (docs/evaluation.md) into the rows of the Hugging Face dataset that
lm-eval's own task reads, and `task_config` wraps them in a task definition whose prompt, choices, target and
metrics are the ones of lm-eval 0.4.x (`lm_eval/tasks/{piqa,hellaswag,winogrande,arc,openbookqa,super_glue/boolq}`).
tests/test_zeroshot.py checks that both definitions build identical requests from the same rows.

Local formats (`data_dir` = a directory in the layout of docs/evaluation.md):

| task | file in data_dir | format |
|---|---|---|
| boolq | boolq/val.jsonl | question, passage, label ("true"/"false"; a bool or 0/1 also works) |
| piqa | piqa/valid.jsonl | goal, sol1, sol2; labels 0/1 line by line in the sibling `valid-labels.lst` |
| hellaswag | hellaswag/hellaswag_val_full.txt.bz2 | 6 lines per task: context, gold 0-3, four endings (.bz2 or plain) |
| winogrande | winogrande/dev.derived.jsonl | sentence (with one "_"), option1, option2, answer ("1"/"2") |
| arc_easy / arc_challenge | arc_*/ARC-*-Test.jsonl | id, question{stem, choices[{text, label}]}, answerKey |
| openbookqa | openbookqa/test.jsonl | id, question{stem, choices[{text, label}]}, answerKey |

The Snakefile imports this module at parse time (`check_tasks_config`: the local paths, the fields of the first
examples, the limit keys and the task names), so it imports neither torch nor lm-eval nor datasets at import time
(errors are `pipsteps.errors.PipError`, imported when raised).
"""

from __future__ import annotations

import bz2
import difflib
import importlib.util
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from pipsteps.errors import PipError

TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
STANDARD_FILES = {"boolq": "boolq/val.jsonl", "piqa": "piqa/valid.jsonl",
                  "hellaswag": "hellaswag/hellaswag_val_full.txt.bz2", "winogrande": "winogrande/dev.derived.jsonl",
                  "arc_easy": "arc_easy/ARC-Easy-Test.jsonl", "arc_challenge": "arc_challenge/ARC-Challenge-Test.jsonl",
                  "openbookqa": "openbookqa/test.jsonl"}
# The 7-task average: acc_norm where lm-eval reports it and the tables use it, acc for BoolQ and WinoGrande
# (lm-eval reports only acc for them). Any other lm-eval task counts with acc.
HEADLINE_METRIC = {"boolq": "acc", "winogrande": "acc", "piqa": "acc_norm", "hellaswag": "acc_norm",
                   "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbookqa": "acc_norm"}
AVERAGE_RULE = ("mean over the evaluated tasks of one accuracy each: acc_norm for hellaswag, arc_easy, "
                "arc_challenge, openbookqa, piqa; acc for boolq, winogrande (and for any other lm-eval task)")


def _error(msg: str) -> Exception:
    """A PipError: a one-line user error."""
    return PipError(msg)


def headline_metric(task: str) -> str:
    return HEADLINE_METRIC.get(task, "acc")


def piqa_labels_path(path: Path) -> Path:
    """PIQA keeps its labels beside the questions: valid.jsonl -> valid-labels.lst."""
    return path.with_name(path.name.removesuffix(".jsonl") + "-labels.lst")


def resolve_files(tasks: list[str] | tuple[str, ...], files: dict[str, str], data_dir: str | None) -> dict[str, Path]:
    """Task -> local file for every task read offline: an explicit `files` entry, else data_dir's standard file."""
    for task in files:
        if task not in STANDARD_FILES:
            raise _error(f"eval.tasks.files.{task}: no local format for this task (local tasks: {', '.join(TASKS)})")
    out: dict[str, Path] = {}
    for task in tasks:
        if task in files:
            out[task] = Path(files[task]).expanduser()
        elif data_dir and task in STANDARD_FILES:
            out[task] = Path(data_dir).expanduser() / STANDARD_FILES[task]
    return out


def unknown_to_lm_eval(names: list[str] | tuple[str, ...]) -> list[str]:
    """The names that are certainly not lm-eval tasks, in about a second: every task of lm-eval's built-in index is
    named literally in one of its task YAML files, so a name that is a word of none of them is unknown. (The job
    checks the rest against lm-eval's full task index, which takes tens of seconds to build.)"""
    spec = importlib.util.find_spec("lm_eval")
    if not names or spec is None or not spec.submodule_search_locations:
        return []  # lm-eval missing: the job says so
    words: set[str] = set()
    for path in (Path(next(iter(spec.submodule_search_locations))) / "tasks").rglob("*.yaml"):
        words.update(re.findall(r"[\w.-]+", path.read_text(encoding="utf-8", errors="replace")))
    return [n for n in names if n not in words]


def unknown_task_message(name: str, known: list[str] | tuple[str, ...] = TASKS) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"eval.tasks.names: unknown lm-eval task {name!r}{hint}; local files exist only for {', '.join(TASKS)}"


def check_tasks_config(t: dict[str, Any], head: int = 20) -> None:
    """Parse-time checks of an enabled eval.tasks block (schema defaults filled in), cheap enough for every
    `snakemake` call: limit keys, data_dir and files exist, the first `head` examples of every local file have their
    fields, and no name is certainly unknown to lm-eval. The job repeats the full checks before loading the model."""
    for task in t["limit"] if isinstance(t["limit"], dict) else ():
        if task not in t["names"]:
            raise _error(f"eval.tasks.limit.{task}: {task!r} is not one of eval.tasks.names ({', '.join(t['names'])})")
    if t["data_dir"] and not Path(t["data_dir"]).expanduser().is_dir():
        raise _error(f"eval.tasks.data_dir: directory not found: {t['data_dir']}")
    local = resolve_files(t["names"], t["files"], t["data_dir"])
    missing = [f"eval.tasks.{f'files.{task}' if task in t['files'] else 'data_dir'}: {task} file not found: {p}"
               for task, path in local.items() for p in local_inputs({task: path}) if not Path(p).is_file()]
    if missing:
        raise _error("; ".join(missing))
    for task, path in local.items():
        LOADERS[task](path, head=head)
    for name in unknown_to_lm_eval([n for n in t["names"] if n not in local and n not in TASKS]):
        raise _error(unknown_task_message(name))


def local_inputs(files: dict[str, str | os.PathLike]) -> list[str]:
    """Every file the local tasks read (PIQA has two), for Snakemake inputs and existence checks."""
    paths = []
    for task, path in files.items():
        paths.append(str(path))
        if task == "piqa":
            paths.append(str(piqa_labels_path(Path(path))))
    return paths


# ---------------------------------------------------------------- loaders (local format -> lm-eval's HF rows)
def _where(task: str) -> str:
    return f"eval.tasks: task {task}"


def _read_lines(task: str, path: Path, max_lines: int | None = None) -> list[str]:
    """The file's lines without their newline (all, or the first `max_lines`); a .bz2 file is unpacked on the fly."""
    try:
        with (bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else open(path, encoding="utf-8")) as f:
            return [line.rstrip("\n") for line in itertools.islice(f, max_lines)]
    except FileNotFoundError:
        raise _error(f"{_where(task)}: file not found: {path}") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _error(f"{_where(task)}: cannot read {path}: {e}") from None


def _jsonl(task: str, path: Path, fields: tuple[str, ...], head: int | None = None) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(_read_lines(task, path, head), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise _error(f"{_where(task)}: {path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise _error(f"{_where(task)}: {path}:{n}: expected a JSON object, got {type(row).__name__}")
        for f in fields:
            value = row
            for part in f.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is None:
                raise _error(f"{_where(task)}: {path}:{n}: missing field '{f}'")
        rows.append(row | {"_line": n})
    if not rows:
        raise _error(f"{_where(task)}: {path} has no examples")
    return rows


def _bad(task: str, path: Path, n: int, msg: str) -> Exception:
    return _error(f"{_where(task)}: {path}:{n}: {msg}")


def load_boolq(path: Path, head: int | None = None) -> list[dict[str, Any]]:
    out = []
    for r in _jsonl("boolq", path, ("question", "passage", "label"), head):
        label = {"true": 1, "false": 0, True: 1, False: 0}.get(
            r["label"].lower() if isinstance(r["label"], str) else r["label"])
        if label is None:
            raise _bad("boolq", path, r["_line"], f"label must be 'true' or 'false', got {r['label']!r}")
        out.append({"question": r["question"], "passage": r["passage"], "label": label})
    return out


def load_piqa(path: Path, head: int | None = None) -> list[dict[str, Any]]:
    rows = _jsonl("piqa", path, ("goal", "sol1", "sol2"), head)
    labels_path = piqa_labels_path(path)
    labels = [s.strip() for s in _read_lines("piqa", labels_path, head) if s.strip()]
    if len(labels) != len(rows):
        raise _error(f"{_where('piqa')}: {labels_path} has {len(labels)} labels for {len(rows)} examples in {path}")
    out = []
    for n, (r, label) in enumerate(zip(rows, labels), 1):
        if label not in ("0", "1"):
            raise _bad("piqa", labels_path, n, f"label must be 0 or 1, got {label!r}")
        out.append({"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(label)})
    return out


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py preprocess (the text form is already cleaned; this keeps any leftover markup)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: Path, head: int | None = None) -> list[dict[str, Any]]:
    lines = _read_lines("hellaswag", path, None if head is None else 6 * head)
    if not lines or len(lines) % 6:
        raise _error(f"{_where('hellaswag')}: {path} has {len(lines)} lines, not a positive multiple of 6 "
                       "(per task: context, gold label 0-3, four endings)")
    out = []
    for i in range(0, len(lines), 6):
        ctx, label, *endings = lines[i:i + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise _bad("hellaswag", path, i + 2, f"gold label must be 0-3, got {label!r}")
        if not ctx.strip() or not all(e.strip() for e in endings):
            raise _bad("hellaswag", path, i + 1, "empty context or ending (each task is 6 lines)")
        out.append({"query": hellaswag_preprocess(ctx), "choices": [hellaswag_preprocess(e) for e in endings],
                    "label": int(label)})
    return out


def load_winogrande(path: Path, head: int | None = None) -> list[dict[str, Any]]:
    out = []
    for r in _jsonl("winogrande", path, ("sentence", "option1", "option2", "answer"), head):
        if "_" not in r["sentence"]:
            raise _bad("winogrande", path, r["_line"], "field 'sentence' has no '_' blank")
        if str(r["answer"]) not in ("1", "2"):
            raise _bad("winogrande", path, r["_line"], f"answer must be '1' or '2', got {r['answer']!r}")
        out.append({"sentence": r["sentence"], "option1": r["option1"], "option2": r["option2"],
                    "answer": str(r["answer"])})
    return out


def _ai2(task: str, path: Path, question_key: str, head: int | None = None) -> list[dict[str, Any]]:
    """ARC / OpenBookQA original jsonl -> HF flat rows (question text, choices{text, label}, answerKey)."""
    out = []
    for r in _jsonl(task, path, ("question.stem", "question.choices", "answerKey"), head):
        choices = r["question"]["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, dict) and "text" in c and "label" in c
                                                    for c in choices):
            raise _bad(task, path, r["_line"], "field 'question.choices' must be a list of {text, label}")
        labels = [str(c["label"]) for c in choices]
        if str(r["answerKey"]).strip() not in labels:
            raise _bad(task, path, r["_line"], f"answerKey {r['answerKey']!r} is not one of the labels {labels}")
        out.append({"id": str(r.get("id", r["_line"])), question_key: r["question"]["stem"],
                    "choices": {"text": [c["text"] for c in choices], "label": labels},
                    "answerKey": str(r["answerKey"])})
    return out


# task -> loader(path, head=None): every row (head: only the first rows, the cheap check at workflow parse time)
LOADERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "boolq": load_boolq, "piqa": load_piqa, "hellaswag": load_hellaswag, "winogrande": load_winogrande,
    "arc_easy": lambda p, head=None: _ai2("arc_easy", p, "question", head),
    "arc_challenge": lambda p, head=None: _ai2("arc_challenge", p, "question", head),
    "openbookqa": lambda p, head=None: _ai2("openbookqa", p, "question_stem", head)}


# ---------------------------------------------------------------- task definitions (lm-eval 0.4.x prompts)
def winogrande_text(doc: dict[str, Any]) -> int:
    """lm-eval winogrande: the gold option index (the choices are the contexts, the target the shared suffix)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc: dict[str, Any]) -> str:
    return doc["sentence"][doc["sentence"].index("_") + 1:].strip()


def winogrande_choice(doc: dict[str, Any]) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


_ACC = {"metric": "acc", "aggregation": "mean", "higher_is_better": True}
_ACC_NORM = {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}
_ARC = {"split": "test", "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}", "doc_to_choice": "{{choices.text}}",
        "metrics": [_ACC, _ACC_NORM]}
DEFINITIONS: dict[str, dict[str, Any]] = {
    "boolq": {"split": "validation", "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
              "doc_to_target": "label", "doc_to_choice": ["no", "yes"], "metrics": [_ACC]},
    "piqa": {"split": "validation", "doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label",
             "doc_to_choice": "{{[sol1, sol2]}}", "metrics": [_ACC, _ACC_NORM]},
    "hellaswag": {"split": "validation", "doc_to_text": "{{query}}", "doc_to_target": "{{label}}",
                  "doc_to_choice": "choices", "metrics": [_ACC, _ACC_NORM]},
    "winogrande": {"split": "validation", "doc_to_text": winogrande_text, "doc_to_target": winogrande_target,
                   "doc_to_choice": winogrande_choice, "metrics": [_ACC]},
    "arc_easy": _ARC, "arc_challenge": _ARC,
    "openbookqa": {"split": "test", "doc_to_text": "question_stem",
                   "doc_to_target": "{{choices.label.index(answerKey.lstrip())}}", "doc_to_choice": "{{choices.text}}",
                   "metrics": [_ACC, _ACC_NORM]},
}


def task_config(task: str, rows: list[dict[str, Any]], source: str | os.PathLike) -> dict[str, Any]:
    """An lm-eval task config dict for `task` over in-memory rows (no dataset download, no HF cache)."""
    from datasets import Dataset, DatasetDict

    d = DEFINITIONS[task]
    dataset = DatasetDict({d["split"]: Dataset.from_list(rows)})
    split_key = "validation_split" if d["split"] == "validation" else "test_split"
    return {"task": task, "output_type": "multiple_choice", "custom_dataset": lambda **_: dataset,
            "training_split": None, split_key: d["split"], "doc_to_text": d["doc_to_text"],
            "doc_to_target": d["doc_to_target"], "doc_to_choice": d["doc_to_choice"],
            "metric_list": [dict(m) for m in d["metrics"]], "num_fewshot": 0,
            "metadata": {"version": 1.0, "source": f"pipsteps local file {source}"}}
