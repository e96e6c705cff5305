"""Perplexity on local WikiText-2 and PTB files: the rows equal the Hugging Face rows the papers use, both chunk
conventions equal a direct computation on the tiny model, and on the real SmolLM2 (slow) the 2048-token convention
gives the lower perplexity (more context per predicted token).

The plumbing runs on tests/fixtures/text (made-up prose in the WikiText-2 raw and PTB formats), so a clone without
../shared runs it; the tests marked `shared_data` read the real files (skipped without them, failing under CI=true).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FIXTURES, SHARED_DATA
from pipsteps.evaluate import EvalConfig
from pipsteps.evaluate import run as evaluate
from pipsteps.surgery import load_model, load_tokenizer
from pipsteps.textdata import read_rows

WIKITEXT = {"name": "wikitext2", "source": str(SHARED_DATA / "wikitext2/test.txt"), "format": "wikitext"}
PTB = {"name": "ptb", "source": str(SHARED_DATA / "ptb/ptb.valid.txt")}
# the same formats, written by hand (tests/fixtures/text)
FIXTURE_SPECS = [WIKITEXT | {"source": str(FIXTURES / "text/wikitext2/test.txt")},
                 PTB | {"source": str(FIXTURES / "text/ptb/ptb.valid.txt")}]


def arrow_bytes(rows: list[str]) -> int:
    """HF `num_bytes` of a one-string-column split: UTF-8 bytes plus 4-byte Arrow offsets (n + 1)."""
    return sum(len(r.encode()) for r in rows) + 4 * (len(rows) + 1)


def test_fixture_files_give_the_hf_rows():
    """The WikiText-2 raw convention (rows joined by a newline: a non-empty row ends with one, an empty row is an empty
    line) and the PTB one (a stripped row per line), on the hand-written files."""
    wiki = read_rows(FIXTURE_SPECS[0]["source"], fmt="wikitext")
    assert len(wiki) == 31 and sum(1 for r in wiki if r) == 17
    assert wiki[:3] == ["", " = Glenmoor Lighthouse = \n", ""] and wiki[3].startswith(" Glenmoor Lighthouse is")
    assert all(r.endswith(" \n") for r in wiki if r)
    assert "\n".join(wiki) == open(FIXTURE_SPECS[0]["source"], encoding="utf-8").read()
    ptb = read_rows(FIXTURE_SPECS[1]["source"])
    assert len(ptb) == 40
    assert ptb[0] == "the company said it expects sales of its new <unk> to rise N N in the coming year"
    assert all(r == r.strip() and r for r in ptb)


@pytest.mark.shared_data
def test_local_files_give_the_hf_rows():
    wiki = read_rows(WIKITEXT["source"], fmt="wikitext")
    assert len(wiki) == 4358 and sum(1 for r in wiki if r) == 2891
    assert arrow_bytes(wiki) == 1_305_092  # wikitext-2-raw-v1 test num_bytes (SOURCES.md)
    ptb = read_rows(PTB["source"])  # default format "lines": one stripped row per line = HF ptb_text_only `sentence`
    assert len(ptb) == 3370 and arrow_bytes(ptb) == 403_156  # ptb_text_only validation num_bytes
    assert ptb[0].startswith("consumers may want to move their telephones") and "<unk>" in " ".join(ptb[:50])


def direct_ppl(model, ids: torch.Tensor, L: int) -> float:
    """exp(mean NLL) over non-overlapping L-token chunks, one chunk at a time, in float64."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for k in range(ids.numel() // L):
            chunk = ids[k * L:(k + 1) * L]
            logp = torch.log_softmax(model(chunk[None]).logits[0, :-1].double(), -1)
            nll -= logp.gather(1, chunk[1:, None]).sum().item()
            n += L - 1
    return math.exp(nll / n)


@pytest.mark.parametrize("source", ["fixtures", pytest.param("shared", marks=pytest.mark.shared_data)])
def test_both_conventions_on_local_files_equal_a_direct_computation(tiny_dir, tmp_path, source):
    """The first 40 lines of each file (same formats; tokenizing all of WikiText-2 costs more than the test)."""
    specs = []
    for spec in (FIXTURE_SPECS if source == "fixtures" else (WIKITEXT, PTB)):
        head = tmp_path / f"{spec['name']}.txt"
        head.write_text("\n".join(open(spec["source"], encoding="utf-8").read().split("\n")[:40]) + "\n")
        specs.append(spec | {"source": str(head)})
    cfg = EvalConfig(datasets=json.dumps(specs), seq_lens=(16, 64), max_tokens=320, threads=2)
    res = evaluate(cfg, tiny_dir)
    model, tok = load_model(tiny_dir, torch.device("cpu")), load_tokenizer(tiny_dir)
    for spec in specs:
        rows = read_rows(spec["source"], fmt=spec.get("format", "lines"))
        ids = torch.tensor(tok("\n\n".join(rows))["input_ids"][:320])
        assert res["tokens"][spec["name"]] == 320
        got = res["ppl"][spec["name"]]
        assert got["16"] == pytest.approx(direct_ppl(model, ids, 16), rel=1e-5)
        assert got["64"] == pytest.approx(direct_ppl(model, ids, 64), rel=1e-5)
        assert got["16"] != pytest.approx(got["64"], rel=1e-3)  # 20 × 15 vs 5 × 63 predicted tokens, other contexts


@pytest.mark.slow
@pytest.mark.shared_data
def test_smollm2_longer_chunks_give_lower_perplexity(smol):
    cfg = EvalConfig(datasets=json.dumps([WIKITEXT]), seq_lens=(128, 2048), max_tokens=2048, threads=2)
    ppl = evaluate(cfg, smol[0] / "model")["ppl"]["wikitext2"]
    assert 5 < ppl["2048"] < ppl["128"] < 200, ppl
    assert ppl["2048"] < 0.85 * ppl["128"], ppl  # the LLM-Pruner (128) and SliceGPT (2048) numbers are not comparable
