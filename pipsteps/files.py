"""Torch-free file helpers: atomic writes, JSON and UTF-8 text with one-line errors, logging set-up.

Every output is written to a temporary sibling first and renamed into place, so a killed job never leaves a file
(or model directory) that looks complete. The light steps (summary, plots, tracking) import only this module and
pipsteps.errors, so they start without loading torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from safetensors import SafetensorError  # the error class only: safetensors.torch is not imported

from pipsteps.errors import PipError


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds (file or directory).

    On any failure (a killed process leaves only a hidden `.NAME.*.partial` directory, removed by the next write of
    the same output) nothing is left at `path`. Write errors such as a full disk become a one-line PipError.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)  # left behind by a killed earlier attempt at this output
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    except (OSError, SafetensorError) as e:  # safetensors reports I/O failures (EFBIG, ENOSPC) as its own error
        reason = getattr(e, "strerror", None) or str(e)
        raise PipError(f"could not write {final}: {reason} (disk full?); nothing was left behind") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike | None) -> Iterator[list[Path | None]]:
    """Temporary siblings for all the outputs of one step (None stays None: an optional output not asked for),
    renamed into place back to back, in the order given, only once the whole block has succeeded.

    A job killed while it computes or writes leaves none of its outputs final: not a complete-looking gradient
    file beside a missing metrics JSON. Give the record that marks the step done (its metrics JSON) last.
    """
    with contextlib.ExitStack() as stack:
        tmps = {i: stack.enter_context(atomic_path(p))  # entered last to first: the exits rename first to last
                for i, p in reversed(list(enumerate(paths))) if p is not None}
        yield [tmps.get(i) for i in range(len(paths))]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_utf8(path: Path, source: str, missing: str = "text file not found") -> str:
    """The text of a local input file, or one line naming it: missing, or not UTF-8 (with the bad byte)."""
    if not path.is_file():
        raise PipError(f"{missing}: {source}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PipError(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipError(f"missing file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # e.g. truncated by a killed writer or by hand
        raise PipError(f"{path} is not valid JSON: {e}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # a tensor or numpy array (duck-typed: this module does not import torch)
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
