"""The GPU path's memory-lean gradients, activation checkpointing, device_map plumbing and require_gpu.

The lean path (compute.lean_grads) must give exactly the plain path's gradients on the CPU (same fp32 additions in
the same order: tolerance 0); activation checkpointing recomputes the forward, so it is held to rtol 1e-6 (fp32).
Tests marked `gpu` need CUDA and are skipped without it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipsteps.grads import GradConfig, collect, layer_of
from pipsteps.io import PipError, resolve_device
from pipsteps.scores import DEPTH_SCORES, depth_scores, layer_stats
from pipsteps.surgery import load_model, load_pruned
from pipsteps.tiny import tiny_model

HAS_CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="tests the behaviour without CUDA")


@pytest.fixture(scope="module")
def views():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 512, (6, 16), generator=g)
    perturbed = clean.clone()
    perturbed[:, 3::4] = torch.randint(0, 512, perturbed[:, 3::4].shape, generator=g)
    return clean, perturbed


def grads_of(model, ids, **kw):
    return collect(model, ids, GradConfig(**kw))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("micro_batch", [1, 4, 6])
def test_lean_gradients_equal_the_plain_path_exactly(family, micro_batch, views):
    model = tiny_model(family, layers=3)
    plain, plain_loss = grads_of(model, views[0], micro_batch=micro_batch, lean=False)
    lean, lean_loss = grads_of(model, views[0], micro_batch=micro_batch, lean=True)
    assert list(lean) == list(plain) and lean_loss == plain_loss
    for name in plain:
        assert lean[name].dtype == torch.float32 and lean[name].device.type == "cpu"
        assert torch.equal(lean[name], plain[name]), name
    assert all(p.grad is None for p in model.parameters())  # nothing left behind on the model


def test_lean_and_plain_give_the_same_scores_and_layer(tmp_path, views):
    """The scores that decide the pruned layer, through the real files: identical, every score formula."""
    model = tiny_model("llama", layers=4)
    stats = {}
    for lean in (False, True):
        for view, ids in zip(("clean", "perturbed"), views):
            g, _ = grads_of(model, ids, micro_batch=4, lean=lean)
            save_file(g, str(tmp_path / f"{view}{lean}.safetensors"))
        stats[lean] = layer_stats(model, tmp_path / f"clean{lean}.safetensors",
                                  tmp_path / f"perturbed{lean}.safetensors")
    for score in set(DEPTH_SCORES) - {"fisher_ps"}:  # fisher_ps reads the psdiff file (test_scores)
        assert depth_scores(score, stats[True]) == depth_scores(score, stats[False]), score


def test_lean_path_never_holds_more_than_one_parameter_gradient(views):
    """During backward at most the parameter being accumulated has a .grad: no full gradient ever exists."""
    model = tiny_model("llama", layers=3)
    params = [p for n, p in model.named_parameters() if layer_of(n) is not None]
    live: list[int] = []
    watchers = [p.register_post_accumulate_grad_hook(lambda _p: live.append(sum(q.grad is not None for q in params)))
                for p in params]  # registered first, so they run before collect's own hook frees the gradient
    try:
        grads_of(model, views[0], micro_batch=2, lean=True)
        assert len(live) == 3 * len(params) and max(live) == 1
        live.clear()
        grads_of(model, views[0], micro_batch=2, lean=False)
        assert max(live) == len(params)  # the plain path: all gradients exist at the end of each backward
    finally:
        for w in watchers:
            w.remove()


@pytest.mark.parametrize("lean", [False, True])
def test_activation_checkpointing_recomputes_and_matches(lean, views):
    model = tiny_model("llama", layers=3)
    calls = []
    mlp = model.model.layers[1].mlp
    mlp_forward = type(mlp).forward

    def counting_forward(self, x):  # module hooks do not fire in the recompute, so count the calls themselves
        calls.append(1)
        return mlp_forward(self, x)

    mlp.forward = counting_forward.__get__(mlp)
    ref, ref_loss = grads_of(model, views[0], micro_batch=3, lean=False)
    assert len(calls) == 2  # one forward per micro-batch
    calls.clear()
    got, loss = grads_of(model, views[0], micro_batch=3, lean=lean, checkpointing=True)
    assert len(calls) == 4  # the layer's forward ran again in backward: its activations were not kept
    assert loss == pytest.approx(ref_loss, rel=1e-7)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-9)
    # the model is left as it was: no checkpointing, every module in eval mode
    assert not model.is_activation_checkpointing
    assert not any(m.training for m in model.modules())


def test_checkpointing_keeps_dropout_off(views):
    """Only the layer modules are flagged as training; dropout inside them must stay off (deterministic grads)."""
    model = tiny_model("llama", layers=2)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    a, _ = grads_of(model, views[0], micro_batch=6, checkpointing=True)
    b, _ = grads_of(model, views[0], micro_batch=6, checkpointing=False)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-9)


@no_cuda
def test_gpu_step_without_cuda_falls_back_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="pipsteps"):
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device("cuda:1") == torch.device("cpu")
    assert len(caplog.records) == 2 and all("no CUDA device" in r.getMessage() for r in caplog.records)
    assert "compute.require_gpu: true" in caplog.records[0].getMessage()
    caplog.clear()
    assert resolve_device("cpu") == torch.device("cpu") and not caplog.records


@no_cuda
def test_require_gpu_fails_with_one_line(tiny_dir, tmp_path):
    with pytest.raises(PipError, match=r"^compute\.require_gpu is true but CUDA is not available \(torch "):
        resolve_device("auto", require_gpu=True)
    with pytest.raises(PipError, match="compute.device is 'cpu'"):
        resolve_device("cpu", require_gpu=True)
    # through the step's CLI: exit 1, the one line on stderr, no output written
    ids = torch.randint(0, 512, (2, 8), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": ids}, str(tmp_path / "clean.safetensors"))
    for step, args in (("gradients", ["--calib", str(tmp_path / "clean.safetensors"), "--out",
                                      str(tmp_path / "g.safetensors")]),
                       ("evaluate", [])):
        proc = subprocess.run([sys.executable, "-m", f"pipsteps.{step}", "--require-gpu", "true", "--model",
                               str(tiny_dir), "--metrics", str(tmp_path / f"{step}.json"), *args],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("ERROR: compute.require_gpu is true but CUDA is not")
        assert not (tmp_path / f"{step}.json").exists() and not (tmp_path / "g.safetensors").exists()


def test_device_map_reaches_from_pretrained(tiny_dir, monkeypatch):
    """CPU can only check the plumbing: the option reaches from_pretrained, and accelerate's map loads."""
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.append(kwargs.get("device_map", "<none>"))
        return original(cls, path, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    ref = load_pruned(tiny_dir)
    for device_map in ("auto", "sequential", {"": "cpu"}):
        model = load_pruned(tiny_dir, device_map=device_map)
        assert {p.device.type for p in model.parameters()} == {"cpu"} and not model.training
        for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
            assert torch.equal(a, b)
    assert seen == ["<none>", "auto", "sequential", {"": "cpu"}]


def test_device_map_is_ignored_with_a_warning_on_cpu(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipsteps"):
        model = load_model(tiny_dir, torch.device("cpu"), device_map="balanced")
    assert "compute.device_map=balanced ignored" in caplog.text
    assert not hasattr(model, "hf_device_map") and next(model.parameters()).device.type == "cpu"


def test_gradients_cli_plumbs_the_compute_options(tiny_dir, tmp_path):
    """The step run with lean/checkpointing/device_map flags writes the same gradients as the plain defaults."""
    from pipsteps.gradients import main

    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(2))
    save_file({"input_ids": ids}, str(tmp_path / "clean.safetensors"))
    out = {}
    for name, flags in (("plain", ["--lean", "false"]),
                        ("lean", ["--lean", "true", "--checkpointing", "true", "--device-map", "auto"])):
        main(["--model", str(tiny_dir), "--calib", str(tmp_path / "clean.safetensors"), "--micro-batch", "2",
              "--out", str(tmp_path / f"{name}.safetensors"), "--metrics", str(tmp_path / f"{name}.json"), *flags])
        out[name] = load_file(str(tmp_path / f"{name}.safetensors"))
    for k in out["plain"]:
        torch.testing.assert_close(out["lean"][k], out["plain"][k], rtol=1e-6, atol=1e-9)


def test_cli_flags_parse_into_the_config():
    from pipsteps import cli

    cfg, _ = cli.parse(GradConfig, ["--lean", "false", "--checkpointing", "true", "--device-map", "None",
                                    "--require-gpu", "true"], "")
    assert cfg == replace(GradConfig(), lean=False, checkpointing=True, device_map=None, require_gpu=True)
    cfg, _ = cli.parse(GradConfig, ["--device-map", "balanced"], "")
    assert cfg.device_map == "balanced" and cfg.lean and not cfg.checkpointing


# ---------------------------------------------------------------- CUDA only
def _lean_on_cuda(dtype, views):
    """(plain grads, lean grads, plain peak, lean peak) of a tiny model on the GPU."""
    model = tiny_model("llama", layers=3).to("cuda", dtype)
    ids = views[0]
    torch.cuda.reset_peak_memory_stats()
    plain, _ = grads_of(model, ids, micro_batch=3, lean=False)
    plain_peak = torch.cuda.max_memory_allocated()
    plain = {k: v.cpu() for k, v in plain.items()}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    lean, _ = grads_of(model, ids, micro_batch=3, lean=True)
    lean_peak = torch.cuda.max_memory_allocated()
    return plain, lean, plain_peak, lean_peak


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_on_cuda_matches_and_uses_less_memory(dtype, views):
    plain, lean, plain_peak, lean_peak = _lean_on_cuda(dtype, views)
    for k in plain:
        assert lean[k].device.type == "cpu"
        torch.testing.assert_close(lean[k], plain[k], rtol=0, atol=0)  # same fp32 additions, host or device
    assert lean_peak < plain_peak


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_auto_device_and_bf16_on_cuda(tiny_dir):
    from pipsteps.io import resolve_dtype

    device = resolve_device("auto", require_gpu=True)
    assert device.type == "cuda" and resolve_dtype("auto", device) == torch.bfloat16
    model = load_model(tiny_dir, device, torch.bfloat16, device_map="auto")
    assert {str(p.device) for p in model.parameters()} <= {f"cuda:{i}" for i in range(torch.cuda.device_count())}
    assert next(model.parameters()).dtype == torch.bfloat16


def test_compute_keys_in_the_schema(repo):
    import yaml
    from snakemake.utils import validate

    from pipsteps.config import ConfigError, check_config

    schema = repo / "workflow/schemas/config.schema.yaml"
    cfg = yaml.safe_load((repo / "tests/e2e/config.yaml").read_text())
    validate(cfg, str(schema))  # fills in the defaults
    assert {k: cfg["compute"][k] for k in ("require_gpu", "lean_grads", "grad_checkpointing", "device_map")} == {
        "require_gpu": False, "lean_grads": True, "grad_checkpointing": False, "device_map": None}
    with pytest.raises(ConfigError, match=r"^config: compute.device_map = 'everywhere' is not allowed \(allowed: "):
        check_config({**cfg, "compute": {"device_map": "everywhere"}}, schema)
    with pytest.raises(ConfigError, match=r"^config: compute.require_gpu: 'yes' is not of type 'boolean'"):
        check_config({**cfg, "compute": {"require_gpu": "yes"}}, schema)
