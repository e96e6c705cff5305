"""The method-comparison protocol (bench/protocol.yaml): loading, checking and enumerating its cells (torch-free).

A protocol declares calibration domains × seeds × (unit, ratio, methods) blocks and how every variant is evaluated.
One **cell** is (block, domain, seed): one real workflow run of the block's methods at the block's unit and ratio,
calibrated on the domain's text with that seed. Cells of the same domain and seed share one work directory, so
their prepared model, calibration views, dense gradients and block influence come from the workflow's own cache.
The dense model (PPL and zero-shot, independent of calibration) is its own run, done once.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's pipsteps (the workflow runs use the same, via PYTHONPATH)

from pipsteps import methods  # noqa: E402  (torch-free)
from pipsteps.config import MOVED  # noqa: E402  (torch-free)

UNITS = ("depth", "width")
TOP_KEYS = {"name", "model", "data_dir", "domains", "seeds", "calibration", "blocks", "eval", "recovery", "settings",
            "views", "workspace"}
DOMAIN_KEYS = {"source", "text_field"}
BLOCK_KEYS = {"unit", "ratio", "methods", "recovery"}
EVAL_KEYS = {"ppl", "zero_shot", "primary"}
PPL_KEYS = {"datasets", "seq_len", "max_tokens"}
ZS_KEYS = {"tasks", "limit"}
RECOVERY_KEYS = {"source", "format", "text_field", "max_examples", "val_size", "max_steps", "epochs", "batch_size",
                 "micro_batch", "cutoff", "lr", "warmup_steps", "eval_steps", "save_steps", "seed"}


# Settings keys renamed in the workflow config since the first cells ran (pipsteps.config.MOVED), hashed under their
# first names so that a rename does not turn finished cells stale (new name -> name in the hash). Only one-to-one
# renames: a flat key split over both units keeps its new names, which stay distinct.
HASH_NAMES = {new[0]: f"prune.{old}" for old, new in MOVED.items() if len(new) == 1}


class ProtocolError(ValueError):
    """A protocol file that cannot run; the message is one line naming the offending keys or values."""


def cell_stem(unit: str, ratio: float, domain: str, seed: int) -> str:
    """A cell's name, the file stem of its result JSON: `width-r0.2-embedded-s1`."""
    return f"{unit}-r{float(ratio):g}-{domain}-s{seed}"


@dataclass(frozen=True)
class Cell:
    unit: str
    ratio: float
    domain: str
    seed: int
    methods: tuple[str, ...]
    recovery: bool

    @property
    def name(self) -> str:
        """File stem of the cell's result JSON, e.g. `width-r0.2-embedded-s1`."""
        return cell_stem(self.unit, self.ratio, self.domain, self.seed)

    @property
    def workdir(self) -> str:
        """Work directory (relative to the protocol's root) shared by the cells of one domain and seed."""
        return f"{self.domain}-s{self.seed}"

    def groups(self) -> dict[str | None, list[str]]:
        """The cell's methods by perturbed view: None for the protocol's own settings, else a `views` name."""
        out: dict[str | None, list[str]] = {}
        for m in self.methods:
            out.setdefault(split(m)[1], []).append(m)
        return out

    def workdir_of(self, view: str | None) -> str:
        """A named view has its own calibration, so its own work directory (the prepared model is shared)."""
        return self.workdir if view is None else f"{self.workdir}-{view}"


def is_pip(method: str) -> bool:
    """A PIP variant (`pip`, `pip_oneshot`, `pip-SCORE`, any of them `@VIEW`), as opposed to a baseline."""
    return split(method)[0].split("-")[0] in methods.PIP_METHODS


def split(method: str) -> tuple[str, str | None]:
    """`pip-fisher_diff@llm_guided` → ("pip-fisher_diff", "llm_guided"); `taylor` → ("taylor", None)."""
    base, _, view = method.partition("@")
    return base, view or None


@dataclass(frozen=True)
class Protocol:
    path: Path
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def workspace(self) -> str:
        """Work-directory namespace: protocols that share one reuse each other's cached workflow jobs."""
        return self.raw.get("workspace", self.name)

    @property
    def data_dir(self) -> Path:
        d = Path(self.raw.get("data_dir", "../shared/data")).expanduser()
        return d if d.is_absolute() else (REPO / d).resolve()

    def expand(self, value: str) -> str:
        """`{data}` in a source names the protocol's data directory (read in place, never copied)."""
        return value.replace("{data}", str(self.data_dir))

    def cells(self) -> list[Cell]:
        """Every cell, block-major, then seed, then domain: the first block's paired cells finish first."""
        return [Cell(b["unit"], float(b["ratio"]), d, int(s), tuple(b["methods"]), bool(b.get("recovery", False)))
                for b in self.raw["blocks"] for s in self.raw["seeds"] for d in self.raw["domains"]]

    def spec(self, cell: Cell) -> dict[str, Any]:
        """Everything that determines a cell's figures; its hash marks a finished result as current or stale."""
        keys = ("model", "calibration", "eval", "settings") + (("views",) if self.raw.get("views") else ()) + (
            ("recovery",) if cell.recovery else ())
        spec = {"cell": asdict(cell), "domain": self.raw["domains"][cell.domain], **{k: self.raw.get(k) for k in keys}}
        if spec["settings"]:
            spec["settings"] = hash_names(spec["settings"])
        if spec.get("views"):
            spec["views"] = {v: hash_names(s or {}) for v, s in spec["views"].items()}
        return spec

    def spec_hash(self, cell: Cell) -> str:
        return hashlib.sha256(json.dumps(self.spec(cell), sort_keys=True).encode()).hexdigest()[:16]


def hash_names(settings: dict[str, Any]) -> dict[str, Any]:
    return {HASH_NAMES.get(k, k): v for k, v in settings.items()}


def _unknown(where: str, got: dict, allowed: set[str]) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise ProtocolError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def check(raw: Any, path: Path) -> None:
    """Raise ProtocolError (one line) for anything the runner could not run: unknown keys, units, methods,
    domains, or a method that does not apply at its block's unit."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: not a YAML mapping")
    _unknown(str(path), raw, TOP_KEYS)
    missing = sorted({"name", "model", "domains", "seeds", "calibration", "blocks", "eval"} - set(raw))
    if missing:
        raise ProtocolError(f"{path}: missing key(s) {', '.join(missing)}")
    if not isinstance(raw["domains"], dict) or not raw["domains"]:
        raise ProtocolError(f"{path}: domains must be a non-empty mapping name -> {{source, text_field}}")
    for name, d in raw["domains"].items():
        if not isinstance(d, dict) or "source" not in d:
            raise ProtocolError(f"{path}: domain {name!r} needs a source")
        _unknown(f"{path}: domain {name!r}", d, DOMAIN_KEYS)
    if not raw["seeds"] or not all(isinstance(s, int) and s >= 0 for s in raw["seeds"]):
        raise ProtocolError(f"{path}: seeds must be a list of non-negative integers")
    bad_units, bad_methods = [], []
    for i, b in enumerate(raw["blocks"]):
        _unknown(f"{path}: blocks[{i}]", b, BLOCK_KEYS)
        if b.get("unit") not in UNITS:
            bad_units.append(str(b.get("unit")))
            continue
        if not 0 < float(b.get("ratio", 0)) < 1:
            raise ProtocolError(f"{path}: blocks[{i}]: ratio must be in (0, 1), got {b.get('ratio')}")
        for m in b.get("methods") or []:
            base, view = split(m)
            if view is not None and view not in (raw.get("views") or {}):
                raise ProtocolError(f"{path}: blocks[{i}]: method {m!r} names an unknown view {view!r}; views: "
                                    f"{', '.join(raw.get('views') or {}) or 'none declared'}")
            try:
                ok = methods.applies(b["unit"], base)
            except methods.MethodError:
                ok = False
            if not ok:
                bad_methods.append(f"{m} ({b['unit']})")
    if bad_units:
        raise ProtocolError(f"{path}: unknown unit(s) {', '.join(bad_units)}; allowed: {', '.join(UNITS)}")
    if bad_methods:
        raise ProtocolError(f"{path}: unknown method(s) or method(s) not applicable at their unit: "
                            f"{', '.join(bad_methods)}")
    ev = raw["eval"]
    _unknown(f"{path}: eval", ev, EVAL_KEYS)
    _unknown(f"{path}: eval.ppl", ev.get("ppl", {}), PPL_KEYS)
    _unknown(f"{path}: eval.zero_shot", ev.get("zero_shot") or {}, ZS_KEYS)
    if ev.get("primary") not in (ev.get("ppl", {}).get("datasets") or {}):
        raise ProtocolError(f"{path}: eval.primary must name one of eval.ppl.datasets, got {ev.get('primary')!r}")
    _unknown(f"{path}: recovery", raw.get("recovery") or {}, RECOVERY_KEYS)
    if any(b.get("recovery") for b in raw["blocks"]) and not raw.get("recovery"):
        raise ProtocolError(f"{path}: a block asks for recovery but the protocol has no recovery section")


def load(path: Path) -> Protocol:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ProtocolError(f"{path}: cannot read protocol ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    check(raw, Path(path))
    proto = Protocol(Path(path), raw)
    bad = [f"{name} ({d['source']})" for name, d in raw["domains"].items() if not readable(proto.expand(d["source"]))]
    if bad:
        raise ProtocolError(f"{path}: unknown domain source(s) {', '.join(bad)}: use embedded:calibration, "
                            f"embedded:heldout or an existing .txt/.jsonl file ({{data}} = {proto.data_dir})")
    return proto


def readable(source: str) -> bool:
    """A calibration source the runner can read offline: an embedded text part or an existing local file."""
    if source.startswith("embedded:"):
        return source in ("embedded:calibration", "embedded:heldout")
    return Path(source).expanduser().is_file()
