"""Thin CLIs: argparse flags generated from a step's frozen dataclass config, so flags always mirror the fields.

A field `micro_batch: int = 4` becomes `--micro-batch 4`; `list[int]` fields take several values; `bool` fields
take `true`/`false`. The help text is the field's `metadata["help"]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from typing import Any, Callable, Sequence, TypeVar

from pipsteps.errors import PipError
from pipsteps.files import setup_logging

T = TypeVar("T")
log = logging.getLogger("pipsteps")


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _none_or(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda s: None if s in ("", "None", "null") else conv(s)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", "")}
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = type(None) in args
        if optional:
            tp = next(a for a in args if a is not type(None))
            origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (list, tuple):
            kwargs.update(nargs="*", type=args[0])
        elif tp is bool:
            kwargs["type"] = _bool
        else:
            kwargs["type"] = _none_or(tp) if optional else tp
        if f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        else:
            kwargs["required"] = True
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)


def parse(cls: type[T], argv: Sequence[str] | None, description: str,
          extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[T, argparse.Namespace]:
    """Parse argv into (config dataclass, namespace with the extra non-config flags such as paths)."""
    parser = argparse.ArgumentParser(description=description)
    add_dataclass_args(parser, cls)
    if extra:
        extra(parser)
    ns = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(ns).items() if k in names}
    return cls(**values), ns


def main_wrapper(fn: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> None:
    """Run a step's main: user-facing errors become one line on stderr and exit code 1."""
    setup_logging()
    try:
        fn(argv)
    except PipError as e:
        log.error("%s", e)
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(1)
