"""LoRA recovery data (prompt masking, formats, split) and pickle-free checkpoint state (optimizer, RNG, fingerprint)."""

import json
import random

import pytest
import torch

from pipsteps.io import PipError
from pipsteps.recovery_data import (IGNORE, build_examples, collate, prompt, split_examples)
from pipsteps.recovery_state import latest_checkpoint, load_checkpoint, save_checkpoint
from pipsteps.tiny import tiny_tokenizer

ROWS = [{"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "The sum is 5."}]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_instruction_loss_covers_only_the_response_plus_eos(tmp_path, tok):
    src = write_jsonl(tmp_path / "a.jsonl", ROWS)
    examples, fmt = build_examples(tok, src, cutoff=256)
    assert fmt == "instruction" and len(examples) == 2
    for row, ex in zip(ROWS, examples):
        n_prompt = len(tok(prompt(row))["input_ids"])
        assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        assert ex.input_ids[-1] == tok.eos_token_id
        assert tok.decode(ex.input_ids[n_prompt:-1]).strip() == row["output"]
    assert "### Input:\n2 and 3" in prompt(ROWS[1]) and "### Input" not in prompt(ROWS[0])
    full, _ = build_examples(tok, src, cutoff=256, train_on_inputs=True)
    assert full[0].labels == full[0].input_ids


def test_truncated_examples_lose_eos_and_responseless_ones_are_dropped(tmp_path, tok):
    src = write_jsonl(tmp_path / "a.jsonl", ROWS)
    n_prompt = len(tok(prompt(ROWS[0]))["input_ids"])
    examples, _ = build_examples(tok, src, cutoff=n_prompt + 2)
    assert len(examples[0].input_ids) == n_prompt + 2 and examples[0].input_ids[-1] != tok.eos_token_id
    n_prompt1 = len(tok(prompt(ROWS[1]))["input_ids"])
    assert len(build_examples(tok, src, cutoff=n_prompt1 + 1)[0]) == 2
    assert len(build_examples(tok, src, cutoff=n_prompt1)[0]) == 1  # ROWS[1]: no room left for its response


def test_json_list_and_text_formats(tmp_path, tok):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    assert build_examples(tok, str(tmp_path / "a.json"))[1] == "instruction"
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "alpha beta gamma " * 30}, {"text": "delta " * 40}])
    examples, fmt = build_examples(tok, src, cutoff=16)
    assert fmt == "text" and all(len(e.input_ids) == 16 and e.labels == e.input_ids for e in examples)
    stream = tok("alpha beta gamma " * 30 + "\n\n" + "delta " * 40)["input_ids"]
    assert len(examples) == len(stream) // 16 and examples[1].input_ids == stream[16:32]
    examples, fmt = build_examples(tok, "embedded:calibration", cutoff=64, max_examples=50)
    assert fmt == "text" and len(examples) > 10


def test_bad_data_fails_with_one_line(tmp_path, tok):
    with pytest.raises(PipError, match="not found"):
        build_examples(tok, str(tmp_path / "missing.jsonl"))
    src = write_jsonl(tmp_path / "t.jsonl", [{"body": "x"}])
    with pytest.raises(PipError, match="missing text field 'text'"):
        build_examples(tok, src)
    with pytest.raises(PipError, match="needs rows with 'instruction' and 'output'"):
        build_examples(tok, src, fmt="instruction")


def test_split_is_seeded_disjoint_and_capped(tok):
    examples, _ = build_examples(tok, "embedded:calibration", cutoff=32, max_examples=40)
    train, val = split_examples(examples, 2000, seed=3)
    assert len(val) == len(examples) // 5 and len(train) + len(val) == len(examples)
    assert {id(e) for e in train}.isdisjoint({id(e) for e in val})
    again, val2 = split_examples(examples, 2000, seed=3)
    assert [e.input_ids for e in val2] == [e.input_ids for e in val]
    assert [e.input_ids for e in split_examples(examples, 2000, seed=4)[1]] != [e.input_ids for e in val]
    batch = collate([examples[0], type(examples[0])([5, 6], [IGNORE, 6])], pad_id=0)
    assert batch["input_ids"].shape == (2, 32) and batch["attention_mask"][1].sum() == 2
    assert (batch["labels"][1, 2:] == IGNORE).all()


def _optimizer(seed):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return p, opt, sched


def test_checkpoint_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    p, opt, sched = _optimizer(0)
    for _ in range(3):
        p.grad = torch.randn(3, 4)
        opt.step()
        sched.step()
    random.seed(5)
    torch.manual_seed(6)
    save_checkpoint(tmp_path, 3, {"w": p.detach()}, {"w": p.detach() * 2}, opt, sched, {"fingerprint": "A"})
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))  # no pickle anywhere
    expected = (torch.rand(2), random.random())
    q, opt2, sched2 = _optimizer(1)
    ck = latest_checkpoint(tmp_path, "A")
    state, adapter, best = load_checkpoint(ck, opt2, sched2)
    assert state["step"] == 3 and torch.equal(best["w"], p.detach() * 2)
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
    with torch.no_grad():
        q.copy_(adapter["w"])
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert opt.state[p].keys() == opt2.state[q].keys() == {"step", "exp_avg", "exp_avg_sq"}
    assert all(torch.equal(opt.state[p][k], opt2.state[q][k]) for k in opt.state[p])
    grad = torch.randn(3, 4)
    p.grad, q.grad = grad.clone(), grad.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)  # the restored optimizer continues exactly


def test_newer_checkpoint_replaces_older_and_other_runs_are_discarded(tmp_path):
    p, opt, sched = _optimizer(0)
    save_checkpoint(tmp_path, 2, {"w": p.detach()}, {"w": p.detach()}, opt, sched, {"fingerprint": "A"})
    save_checkpoint(tmp_path, 4, {"w": p.detach()}, {"w": p.detach()}, opt, sched, {"fingerprint": "A"})
    assert [d.name for d in tmp_path.iterdir()] == ["step_000004"]
    (tmp_path / ".step_000006.x.partial").mkdir()  # a write killed midway is never picked up
    assert latest_checkpoint(tmp_path, "A").name == "step_000004"
    assert latest_checkpoint(tmp_path, "B") is None and not tmp_path.exists()  # changed config: start afresh


@pytest.mark.parametrize("recovery,message", [
    ({"enabled": True, "source": None}, "recovery.enabled is true but recovery.source is empty"),
    ({"enabled": True, "source": "  "}, "recovery.enabled is true but recovery.source is empty"),
    ({"enabled": True, "batch_size": 10}, r"recovery.batch_size \(10\) must be a multiple of recovery.micro_batch \(4\)"),
    ({"enabled": True, "micro_batch": 3}, r"recovery.batch_size \(64\) must be a multiple of recovery.micro_batch \(3\)"),
    ({"enabled": True, "rank": 4}, r"unknown key recovery\.rank \(allowed in recovery: enabled, source"),
])
def test_impossible_recovery_combinations_fail_at_config_check(repo, recovery, message):
    from pipsteps.config import ConfigError, check_config

    schema = repo / "workflow/schemas/config.schema.yaml"
    cfg = {"model": {"source": "tiny:llama"}, "prune": {"target_ratio": 0.2}, "recovery": recovery}
    with pytest.raises(ConfigError, match=message) as e:
        check_config(cfg, schema)
    assert "\n" not in str(e.value)
    if "rank" not in recovery:
        check_config(cfg | {"recovery": recovery | {"enabled": False}}, schema)  # only checked when enabled
    check_config(cfg | {"recovery": {"enabled": True}}, schema)  # the defaults (alpaca-cleaned, 64 / 4) are fine
