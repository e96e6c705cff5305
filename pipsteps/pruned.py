"""What the workflow wrote, for a user: where a variant's final model is and what was removed from it.

Torch-free (plain JSON reading); `pipsteps.surgery.load_pruned` loads the model itself.

    path = final_model("results/width/pip/r0.2")  # results/width/pip/r0.2/model
    print(removed(path))  # on the tiny test model, for example:
    # removed 0 of 6 decoder layers; 3 of 12 KV groups (6 query heads) in 3 layers; 177 of 768 MLP channels in 5 layers

Indices are always original ones (of the dense model), so they can be compared across rounds and variants.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipsteps.errors import PipError

MANIFEST = "pruning_manifest.json"


@dataclass(frozen=True)
class Removal:
    """What pruning removed, by original index. The width fields are keyed by original layer index and hold only
    layers that lost something; a removed layer appears in `layers` only."""

    num_layers: int  # decoder layers of the dense model
    layers: tuple[int, ...]  # removed decoder layers
    kv_heads: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # removed KV groups per layer
    heads: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # removed query heads per layer
    channels: Mapping[int, tuple[int, ...]] = field(default_factory=dict)  # removed MLP channels per layer
    base: Mapping[str, int] = field(default_factory=dict)  # per-layer dense shape (width manifests only)

    def __str__(self) -> str:
        kept = self.num_layers - len(self.layers)
        parts = [f"removed {len(self.layers)} of {self.num_layers} decoder layers"
                 + (f" {list(self.layers)}" if self.layers else "")]
        if self.base:
            n_kv = sum(map(len, self.kv_heads.values()))
            n_q = sum(map(len, self.heads.values()))
            n_ch = sum(map(len, self.channels.values()))
            parts.append(f"{n_kv} of {kept * self.base['num_key_value_heads']} KV groups ({n_q} query heads) in "
                         f"{_layers(self.kv_heads)}")
            parts.append(f"{n_ch} of {kept * self.base['intermediate_size']} MLP channels in "
                         f"{_layers(self.channels)}")
        return "; ".join(parts)


def _layers(by_layer: Mapping[int, Any]) -> str:
    return f"{len(by_layer)} layer" + ("" if len(by_layer) == 1 else "s")


def _read(path: Path) -> dict[str, Any]:
    f = path / MANIFEST
    if not f.exists():
        raise PipError(f"no {MANIFEST} in {path} (not a model directory written by pipsteps)")
    return json.loads(f.read_text())


def removed(model: str | os.PathLike | Mapping[str, Any]) -> Removal:
    """What was removed from a model directory written by pipsteps (or from its manifest, as a dict)."""
    manifest = model if isinstance(model, Mapping) else _read(Path(model))
    kept = list(manifest["kept_layers"])
    width = manifest.get("width")
    out: dict[str, dict[int, tuple[int, ...]]] = {"kv_heads": {}, "heads": {}, "channels": {}}
    if width:
        base = width["base"]
        sizes = {"kv_heads": base["num_key_value_heads"], "heads": base["num_attention_heads"],
                 "channels": base["intermediate_size"]}
        for orig, entry in zip(kept, width["layers"]):
            for key, n in sizes.items():
                gone = tuple(sorted(set(range(n)) - set(entry[f"kept_{key}"])))
                if gone:
                    out[key][orig] = gone
    return Removal(num_layers=manifest["base_num_hidden_layers"], layers=tuple(sorted(manifest["removed_layers"])),
                   base=dict(width["base"]) if width else {}, **out)


def final_model(variant: str | os.PathLike) -> Path:
    """The pruned model of a variant: `<variant>/model`, its last round's model, kept once every round has run
    (e.g. variant = "results/width/pip/r0.2")."""
    variant = Path(variant)
    if not (variant / "plan.json").exists():  # pipsteps.layout: VARIANT/plan.json, VARIANT/model
        raise PipError(f"no plan.json in {variant} (expected a variant directory such as results/width/pip/r0.2)")
    path = variant / "model"
    if not path.is_dir():
        raise PipError(f"{path} does not exist yet: the variant's rounds have not all run")
    return path
