"""Config validation with one-line errors that name the offending key (used by workflow/rules/common.smk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match


class ConfigError(ValueError):
    pass


def check_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Raise ConfigError with one line naming the key and the allowed values on the first schema violation."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    err = best_match(Draft202012Validator(schema).iter_errors(config))
    if err is None:
        return
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = ", ".join(err.schema.get("properties", {}))
        where = "" if key == "<top level>" else f"{key}."
        raise ConfigError(f"config: unknown key {', '.join(where + e for e in extra)} (allowed in "
                          f"{key}: {allowed})")
    if err.validator == "enum":
        raise ConfigError(f"config: {key} = {err.instance!r} is not allowed (allowed: {', '.join(map(str, err.validator_value))})")
    raise ConfigError(f"config: {key}: {err.message}")
