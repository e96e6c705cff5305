"""Config validation with one-line errors that name the offending key (used by workflow/rules/common.smk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from pipsteps import methods


class ConfigError(ValueError):
    pass


# Keys of the flat prune layout -> the key(s) of the per-unit blocks prune.depth and prune.width that replace them
# (also read by bench/protocol.py, which hashes a one-to-one renamed key under its first name).
MOVED = {"score": ("prune.depth.score",), "layers_per_round": ("prune.depth.layers_per_round",),
         "width_score": ("prune.width.score",), "width_rounds": ("prune.width.rounds",),
         "ranking": ("prune.width.ranking",),
         "protect_first": ("prune.depth.protect_first", "prune.width.protect_first"),
         "protect_last": ("prune.depth.protect_last", "prune.width.protect_last")}


def check_moved(config: dict[str, Any]) -> None:
    """A config written for the flat prune layout gets one line naming where each of its keys went."""
    prune = config.get("prune")
    old = [k for k in MOVED if isinstance(prune, dict) and k in prune]
    if old:
        raise ConfigError("config: " + "; ".join(f"prune.{k} is now {' and '.join(MOVED[k])}" for k in old))


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError with one line naming the key and the allowed values on the first schema violation (or
    where a key of the old flat prune layout went), or on the first impossible combination of keys
    (check_combinations)."""
    check_moved(config)
    schema = yaml.safe_load(Path(schema_path).read_text())
    err = best_match(Draft202012Validator(schema).iter_errors(config))
    if err is None:
        check_combinations(config, schema)
        return
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(err.schema.get("properties", {}))
        where = "" if key == "<top level>" else f"{key}."
        raise ConfigError(f"config: unknown key {', '.join(where + e for e in extra)} (allowed in "
                          f"{key}: {allowed})")
    if err.validator == "pattern" and "method_names" in err.schema.get("$comment", ""):
        raise ConfigError(f"config: {key} = {err.instance!r} is not allowed (allowed: {', '.join(methods.METHODS)}, "
                          "or pip-SCORE / pip_oneshot-SCORE with a PIP score)")
    if err.validator == "enum":
        raise ConfigError(f"config: {key} = {err.instance!r} is not allowed (allowed: {', '.join(map(str, err.validator_value))})")
    raise ConfigError(f"config: {key}: {err.message}")


def value(config: dict[str, Any], schema: dict[str, Any], key: str) -> Any:
    """config[a][b] for key "a.b", or the schema default where the config leaves it out (defaults are not filled yet)."""
    node: Any = config
    for part in key.split("."):
        schema = schema.get("properties", {}).get(part, {})
        if not isinstance(node, dict) or part not in node:
            return schema.get("default")
        node = node[part]
    return node


def check_combinations(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Cross-key checks the schema cannot express, each a one-line ConfigError naming the keys."""
    if value(config, schema, "recovery.enabled"):
        src = value(config, schema, "recovery.source")
        if src is None or not str(src).strip():
            raise ConfigError("config: recovery.enabled is true but recovery.source is empty: give a HF dataset, "
                              "a local .json/.jsonl/.txt file or embedded:calibration")
        batch, micro = value(config, schema, "recovery.batch_size"), value(config, schema, "recovery.micro_batch")
        if batch % micro:
            raise ConfigError(f"config: recovery.batch_size ({batch}) must be a multiple of recovery.micro_batch "
                              f"({micro})")
    check_methods(config, schema)


def check_methods(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Every method runs at some unit of the run: depth-only methods and scores need unit depth, width-only scores
    unit width, and an explicit pip-SCORE must name a score of some unit (pipsteps.methods)."""
    grid = value(config, schema, "prune.grid") or {}
    units = grid.get("units") or [value(config, schema, "prune.unit")]
    names = grid.get("methods") or [value(config, schema, "prune.method"), *value(config, schema, "prune.baselines")]
    key = "prune.grid.methods" if grid.get("methods") else "prune.method/baselines"
    for name in names:
        base, score, _ = methods.parse(name)
        if score and not any(score in methods.scores_of(u) for u in ("depth", "width")):
            raise ConfigError(f"config: {key}: {name!r}: unknown PIP score {score!r} (depth: "
                              f"{', '.join(methods.DEPTH_SCORES)}; width: {', '.join(methods.WIDTH_SCORES)})")
        if not any(methods.applies(u, name) for u in units):
            where = "whole layers (unit depth)" if base in methods.DEPTH_ONLY or score not in methods.WIDTH_SCORES \
                else "groups (unit width)"
            raise ConfigError(f"config: {key}: {name} prunes {where} only, but the run's units are "
                              f"{', '.join(units)} (list that unit in prune.unit or prune.grid.units)")
