import json

import pytest
import torch
from safetensors.torch import load_file

from pipsteps.calibration import CalibConfig, run
from pipsteps.io import PipError


def test_two_views_of_exactly_n_by_l_tokens(tiny_dir, tmp_path):
    m = run(CalibConfig(n_samples=5, seq_len=32, seed=3), tiny_dir, tmp_path)
    clean = load_file(tmp_path / "clean.safetensors")["input_ids"]
    pert = load_file(tmp_path / "perturbed.safetensors")["input_ids"]
    assert clean.shape == pert.shape == (5, 32) and clean.dtype == torch.int64
    assert (clean != pert).any(dim=1).all()  # every sample was perturbed
    assert 0.15 <= m["edit_rate"] <= 0.21
    records = [json.loads(line) for line in (tmp_path / "texts.jsonl").read_text().splitlines()]
    assert len(records) == 5
    for r in records:
        assert r["edits"] and all(old in r["clean"] and new in r["perturbed"] for old, new in r["edits"])
    # the control view (noise_control): n further clean windows, none of them one of the clean samples
    control = load_file(tmp_path / "control.safetensors")["input_ids"]
    assert control.shape == (5, 32) and m["control_samples"] == 5
    assert not {tuple(x) for x in control.tolist()} & {tuple(x) for x in clean.tolist()}


def test_several_perturbation_draws_per_window(tiny_dir, tmp_path):
    """draws = k: the perturbed view holds k independent perturbations of every clean window (row i·k + j); the
    first draw is the single-draw view's, so draws = 1 is unchanged."""
    one = run(CalibConfig(n_samples=4, seq_len=32, seed=3), tiny_dir, tmp_path / "one")
    m = run(CalibConfig(n_samples=4, seq_len=32, seed=3, draws=3), tiny_dir, tmp_path / "three")
    clean = load_file(tmp_path / "three" / "clean.safetensors")["input_ids"]
    pert = load_file(tmp_path / "three" / "perturbed.safetensors")["input_ids"]
    assert clean.shape == (4, 32) and pert.shape == (12, 32) and m["draws"] == 3
    assert torch.equal(clean, load_file(tmp_path / "one" / "clean.safetensors")["input_ids"])
    assert torch.equal(pert[::3], load_file(tmp_path / "one" / "perturbed.safetensors")["input_ids"])
    assert (pert != clean.repeat_interleave(3, 0)).any(dim=1).all()  # every draw edits its window
    # independent draws, not copies of the first (two may coincide on a short window: 10 of 12 differ here)
    assert len({tuple(x) for x in pert.tolist()}) >= 8
    records = [json.loads(line) for line in (tmp_path / "three" / "texts.jsonl").read_text().splitlines()]
    assert [(r["window"], r["draw"]) for r in records][:3] == [(records[0]["window"], j) for j in range(3)]
    assert 0.15 <= m["edit_rate"] <= 0.21 and one["calibration_hash"] != m["calibration_hash"]
    with pytest.raises(PipError, match="draws >= 1"):
        run(CalibConfig(n_samples=4, seq_len=32, draws=0), tiny_dir, tmp_path / "zero")


def test_deterministic_under_seed(tiny_dir, tmp_path):
    a = run(CalibConfig(n_samples=4, seq_len=32, seed=1), tiny_dir, tmp_path / "a")
    b = run(CalibConfig(n_samples=4, seq_len=32, seed=1), tiny_dir, tmp_path / "b")
    c = run(CalibConfig(n_samples=4, seq_len=32, seed=2), tiny_dir, tmp_path / "c")
    assert a["calibration_hash"] == b["calibration_hash"] != c["calibration_hash"]
    assert (tmp_path / "a" / "texts.jsonl").read_bytes() == (tmp_path / "b" / "texts.jsonl").read_bytes()


def test_local_txt_and_jsonl_sources(tiny_dir, tmp_path):
    from pipsteps.textdata import embedded_paragraphs

    paras = embedded_paragraphs("calibration")[:150]
    (tmp_path / "c.txt").write_text("\n".join(paras))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in paras))
    a = run(CalibConfig(source=str(tmp_path / "c.txt"), n_samples=3, seq_len=32), tiny_dir, tmp_path / "a")
    b = run(CalibConfig(source=str(tmp_path / "c.jsonl"), text_field="body", n_samples=3, seq_len=32), tiny_dir,
            tmp_path / "b")
    assert a["n_samples"] == b["n_samples"] == 3


@pytest.mark.parametrize("content,match", [
    ("too short for anything " * 5, "calibration text too short"),
    (b"\xff\xfe not utf8", "is not UTF-8"),
])
def test_bad_text_files_fail_clearly(tiny_dir, tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PipError, match=match):
        run(CalibConfig(source=str(f), n_samples=4, seq_len=32), tiny_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "clean.safetensors").exists()


def test_jsonl_without_field_names_line_and_field(tiny_dir, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(PipError, match=r"bad.jsonl:2: missing text field 'text'"):
        run(CalibConfig(source=str(f), n_samples=1, seq_len=8), tiny_dir, tmp_path / "out")
