"""LoRA recovery on tiny models: the loss goes down, merged = base + adapter, heterogeneous layer shapes, a SIGKILLed
run resumes from its checkpoint, and the workflow evaluates and summarises the recovered stage."""

from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import E2E, REPO, TEST_CORES, snakemake
from safetensors.torch import load_file

from pipsteps.recover import RecoverConfig, attach, run, train
from pipsteps.recovery_data import build_examples, split_examples
from pipsteps.surgery import load_model, load_tokenizer, read_manifest, remove_layers, save_pruned
from pipsteps.tiny import tiny_model, tiny_tokenizer

IDS = torch.randint(4, 512, (2, 24), generator=torch.Generator().manual_seed(0))
ROWS = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} " * 8}
        for w in ("alpha", "beta", "gamma", "delta", "value", "class", "method", "object", "string", "module", "scope",
                  "frame", "block", "token", "list", "tuple", "set", "dict", "loop", "call", "name", "type", "code",
                  "file")]
FAST = dict(cutoff=128, epochs=20, batch_size=8, micro_batch=4, val_size=4, warmup_steps=0, lr=1e-2, eval_steps=2, save_steps=2,
            max_steps=8, threads=1)


def cfg(**kw) -> RecoverConfig:
    return RecoverConfig(**(FAST | kw))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir, tmp_path_factory) -> Path:
    """The tiny Llama with layers 1 and 4 removed, in the pruned-model format."""
    model = load_model(tiny_dir, "cpu")
    remove_layers(model, [1, 4])
    manifest = read_manifest(tiny_dir)
    manifest.update(kept_layers=[0, 2, 3, 5], removed_layers=[1, 4], method="random")
    out = tmp_path_factory.mktemp("pruned") / "model"
    save_pruned(model, load_tokenizer(tiny_dir), out, manifest)
    return out


@pytest.fixture(scope="module")
def recovered(pruned_dir, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("recovered")
    metrics = run(cfg(source=str(data)), pruned_dir, out / "model", out / "adapter", out / "checkpoint")
    return out, metrics


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_a_few_steps_reduce_the_loss_of_a_depth_pruned_model(recovered):
    _, m = recovered
    train_losses = [h["loss"] for h in m["history"]["train"]]
    assert m["format"] == "instruction" and m["n_train"] == 20 and m["n_val"] == 4 and m["total_steps"] == 8
    assert len(train_losses) == 8 and all(math.isfinite(x) for x in train_losses)
    assert sum(train_losses[-2:]) / 2 < 0.9 * sum(train_losses[:2]) / 2, train_losses
    assert [h["step"] for h in m["history"]["val"]] == [0, 2, 4, 6, 8]
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.2 and m["best_step"] > 0
    assert m["best_val_loss"] == min(h["loss"] for h in m["history"]["val"])


def test_recovered_model_keeps_the_manifest_and_records_the_recovery(recovered, pruned_dir):
    out, m = recovered
    manifest = json.loads((out / "model/pruning_manifest.json").read_text())
    assert manifest["kept_layers"] == [0, 2, 3, 5] and manifest["removed_layers"] == [1, 4]
    assert manifest["method"] == "random"  # the pruning record is preserved
    assert manifest["recovery"]["method"] == "lora" and manifest["recovery"]["best_step"] == m["best_step"]
    assert manifest["recovery"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"]
    model = load_model(out / "model", "cpu")
    assert model.config.num_hidden_layers == 4 and m["params_total"] == sum(p.numel() for p in model.parameters())
    assert not any("lora" in k for k in load_file(out / "model/model.safetensors"))


def test_merged_model_equals_base_plus_adapter(recovered, pruned_dir):
    from peft import PeftModel

    out, _ = recovered
    base = logits(load_model(pruned_dir, "cpu"))
    with_adapter = logits(PeftModel.from_pretrained(load_model(pruned_dir, "cpu"), out / "adapter").eval())
    merged = logits(load_model(out / "model", "cpu"))
    assert (merged - base).abs().max() > 1e-2  # the adapter really changes the model
    assert (merged - with_adapter).abs().max() <= 1e-4


def heterogeneous_model() -> torch.nn.Module:
    """A tiny Llama with layer 2 removed and a different number of MLP channels kept in every layer (by hand)."""
    model = tiny_model("llama", seed=3)
    remove_layers(model, [2])
    g = torch.Generator().manual_seed(0)
    for layer, width in zip(model.model.layers, (128, 96, 40, 72, 112)):
        mlp = layer.mlp
        keep = torch.randperm(128, generator=g)[:width].sort().values
        for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            old = getattr(mlp, name)
            w = old.weight.detach().index_select(dim, keep).clone()
            new = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            new.weight = torch.nn.Parameter(w)
            setattr(mlp, name, new)
    return model


def test_heterogeneous_shapes_train_and_merge_exactly(data):
    model = heterogeneous_model()
    fresh = copy.deepcopy(model)
    tok = tiny_tokenizer()
    examples, _ = build_examples(tok, str(data), cutoff=128)
    train_set, val_set = split_examples(examples, 4, seed=0)
    result = train(model, train_set, val_set, cfg(), pad_id=tok.pad_token_id)
    losses = [h["loss"] for h in result["history"]["train"]]
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses
    assert result["best_val_loss"] < result["history"]["val"][0]["loss"]
    base = logits(fresh)
    pm = attach(fresh, cfg(), result["adapter"]).eval()
    with_adapter = logits(pm)
    merged = pm.merge_and_unload().eval()
    assert [layer.mlp.up_proj.out_features for layer in merged.model.layers] == [128, 96, 40, 72, 112]
    assert (logits(merged) - base).abs().max() > 1e-2
    assert (logits(merged) - with_adapter).abs().max() <= 1e-4


def cli_args(model: Path, out: Path, data: Path, **kw) -> list[str]:
    args = [sys.executable, "-m", "pipsteps.recover", "--model", str(model), "--out", str(out / "model"),
            "--adapter", str(out / "adapter"), "--checkpoint", str(out / "checkpoint"),
            "--metrics", str(out / "recovery.json"), "--plot", str(out / "loss.png"), "--source", str(data)]
    for k, v in (FAST | kw).items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(pruned_dir, data, tmp_path):
    settings = dict(max_steps=24, save_steps=4, eval_steps=4, dropout=0.1)
    ref = run(cfg(source=str(data), **settings), pruned_dir, tmp_path / "ref" / "model")
    out = tmp_path / "killed"
    proc = subprocess.Popen(cli_args(pruned_dir, out, data, **settings), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoint").glob("step_*/state.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted((out / "checkpoint").glob("step_*"))
    assert len(saved) == 1 and not (out / "model").exists() and not (out / "recovery.json").exists()
    step = int(saved[0].name.split("_")[1])
    assert 4 <= step < 24 and step % 4 == 0
    rerun = subprocess.run(cli_args(pruned_dir, out, data, **settings), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {step} of 24" in rerun.stderr
    m = json.loads((out / "recovery.json").read_text())
    assert m["resumed_from_step"] == step and [h["step"] for h in m["history"]["train"]] == list(range(1, 25))
    assert m["history"] == ref["history"] and m["best_step"] == ref["best_step"]
    a, b = load_file(out / "model/model.safetensors"), load_file(tmp_path / "ref/model/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert not (out / "checkpoint").exists()  # removed once every output is in place
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


RECOVERY = {"enabled": True, "source": "embedded:calibration", "cutoff": 32, "batch_size": 8, "micro_batch": 4,
            "val_size": 8, "max_steps": 6, "eval_steps": 2, "save_steps": 2, "warmup_steps": 0}
PRUNING_RULES = {"prepare_model", "prepare_calibration", "collect_gradients", "plan_rounds", "prune_round"}


def e2e_config(workdir: Path, **recovery) -> Path:
    cfg = yaml.safe_load(E2E.read_text())
    cfg["recovery"] = RECOVERY | recovery
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_workflow_recovers_resumes_after_a_kill_and_summarises_the_recovered_stages(e2e_run, tmp_path):
    from test_faults import kill_tree_in
    from test_workflow import dry_jobs

    workdir = tmp_path / "w"
    shutil.copytree(e2e_run, workdir, symlinks=True)  # the finished tiny run: enabling recovery adds to it
    jobs = dry_jobs(workdir, e2e_config(workdir))
    assert jobs["recover_lora"] == 2 and jobs["evaluate_ppl"] == 2 and jobs["summarize"] == 1, jobs
    assert not jobs.keys() & PRUNING_RULES, jobs
    # preempted after the first recovery checkpoint: the checkpoint survives and the rerun continues from it
    proc = subprocess.Popen(snakemake_cmd(workdir), cwd=workdir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((workdir / "results/depth").glob("*/r0.2/recovered/checkpoint/step_*/state.json")):
        assert proc.poll() is None, "workflow ended before a recovery checkpoint appeared"
        assert time.monotonic() < deadline, "no recovery checkpoint within 600 s"
        time.sleep(0.05)
    kill_tree_in(workdir)
    proc.wait(timeout=60)
    snakemake(workdir, "--unlock")
    snakemake(workdir)
    logs = [f.read_text() for f in (workdir / "logs/recover_lora/depth").glob("*/r0.2.log")]
    assert len(logs) == 2 and any("resumed from checkpoint" in log for log in logs)
    r = workdir / "results/depth/pip/r0.2"
    ev = json.loads((r / "recovered/eval/metrics.json").read_text())
    assert ev["num_layers"] == 4 and all(math.isfinite(v) for v in ev["ppl"]["heldout"].values())
    rec = json.loads((r / "recovered/recovery.json").read_text())
    assert rec["total_steps"] == 6 and rec["format"] == "text" and len(rec["history"]["train"]) == 6
    assert (r / "recovered/loss.png").exists() and not list(workdir.glob("results/**/checkpoint"))
    manifest = json.loads((r / "recovered/model/pruning_manifest.json").read_text())
    assert manifest["removed_layers"] == json.loads((r / "model/pruning_manifest.json").read_text())[
        "removed_layers"] and manifest["recovery"]["steps"] == 6
    rows = [line.split("\t") for line in (workdir / "results/summary.tsv").read_text().splitlines()]
    assert [row[0] for row in rows[1:]] == ["dense", "depth/pip/r0.2", "depth/pip/r0.2/recovered",
                                            "depth/random/r0.2", "depth/random/r0.2/recovered"]
    assert dict(zip(rows[0], rows[3]))["recover_steps"] == "6"
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    jobs = dry_jobs(workdir, e2e_config(workdir, lr=0.001))  # a recovery setting reruns recovery only
    assert jobs["recover_lora"] == 2 and jobs["evaluate_ppl"] == 2 and not jobs.keys() & PRUNING_RULES, jobs


def snakemake_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--workflow-profile",
            str(REPO / "profiles/default"), *TEST_CORES]


@pytest.mark.parametrize("change,message", [  # the other combinations: tests/unit/test_recovery_data.py
    ({"source": ""}, "config: recovery.enabled is true but recovery.source is empty"),
    ({"source": "/no/such/alpaca.json"}, "recovery.source: file not found: /no/such/alpaca.json"),
])
def test_bad_recovery_config_fails_at_parse_time(tmp_path, change, message):
    proc = snakemake(tmp_path, "-n", config=e2e_config(tmp_path, **change), check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_width_pruned_model_recovers_and_keeps_its_heterogeneous_manifest(tiny_dir, data, tmp_path):
    """A real width-pruned model (pipsteps.width, per-layer KV groups and channels) through the recovery step: the
    saved recovered model keeps every layer's shape and the width manifest, reloads with load_pruned, and equals
    the pruned model plus the best adapter."""
    from pipsteps.surgery import MANIFEST, load_pruned, new_manifest
    from pipsteps.width import prune_width

    model = load_model(tiny_dir, "cpu")
    manifest = new_manifest(len(model.model.layers))
    prune_width(model, manifest, {1: [0], 3: [1]}, {0: list(range(40)), 2: list(range(0, 128, 3)), 4: [5, 6]})
    pruned = tmp_path / "width" / "model"
    save_pruned(model, load_tokenizer(tiny_dir), pruned, manifest)
    shapes = [(layer.self_attn.k_proj.out_features, layer.mlp.up_proj.out_features) for layer in model.model.layers]
    assert len(set(shapes)) > 2  # heterogeneous: the config class cannot express it
    result = run(cfg(source=str(data)), pruned, tmp_path / "rec" / "model", tmp_path / "rec" / "adapter")
    losses = [h["loss"] for h in result["history"]["train"]]
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    recovered = load_pruned(tmp_path / "rec" / "model")
    assert [(layer.self_attn.k_proj.out_features, layer.mlp.up_proj.out_features)
            for layer in recovered.model.layers] == shapes
    saved = json.loads((tmp_path / "rec" / "model" / MANIFEST).read_text())
    assert saved["width"]["layers"] == manifest["width"]["layers"]
    base = logits(load_pruned(pruned))
    assert (logits(recovered) - base).abs().max() > 1e-3  # the adapter was merged, not dropped
    with_adapter = logits(attach(load_pruned(pruned), cfg(), load_file(tmp_path / "rec" / "adapter" /
                                                                         "adapter_model.safetensors")).eval())
    assert (logits(recovered) - with_adapter).abs().max() <= 1e-4
