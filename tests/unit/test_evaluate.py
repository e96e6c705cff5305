import math

import pytest
import torch

from pipsteps.evaluate import EvalConfig, perplexity, run
from pipsteps.io import PipError
from pipsteps.textdata import wikitext_rows
from pipsteps.tiny import tiny_model


def direct_ppl(model, ids, L):
    """Chunk by chunk, token by token: exp(mean NLL of x_t given x_<t) within each non-overlapping chunk."""
    nll, n = 0.0, 0
    with torch.no_grad():
        for k in range(ids.numel() // L):
            chunk = ids[k * L:(k + 1) * L]
            logp = torch.log_softmax(model(chunk[None]).logits[0].double(), -1)
            for t in range(1, L):
                nll -= logp[t - 1, chunk[t]].item()
                n += 1
    return math.exp(nll / n), n


def test_perplexity_equals_direct_computation_for_both_conventions():
    model = tiny_model("llama", seed=3)
    ids = torch.randint(0, 512, (200,), generator=torch.Generator().manual_seed(0))
    short, n_short = perplexity(model, ids, 16, batch_tokens=48)
    long, n_long = perplexity(model, ids, 64, batch_tokens=64)
    assert (short, n_short) == pytest.approx(direct_ppl(model, ids, 16), rel=1e-5)
    assert (long, n_long) == pytest.approx(direct_ppl(model, ids, 64), rel=1e-5)
    assert n_short == 12 * 15 and n_long == 3 * 63  # non-overlapping chunks, remainder dropped
    assert short != pytest.approx(long, rel=1e-3)


def test_wikitext_rows_recover_hf_rows():
    raw = " = Title = \n\n Body line one .\n\n\n Next .\n"
    rows = wikitext_rows(raw)
    assert rows == [" = Title = \n", " Body line one .\n", "", " Next .\n"]


def test_missing_eval_file_fails_before_loading_the_model(tmp_path):
    cfg = EvalConfig(datasets='[{"name": "w", "source": "%s"}]' % (tmp_path / "nope.txt"))
    with pytest.raises(PipError, match="text file not found: .*nope.txt"):
        run(cfg, tmp_path / "no-model-here")


def test_text_shorter_than_one_chunk_fails():
    with pytest.raises(PipError, match="fewer than one chunk"):
        perplexity(tiny_model("llama"), torch.arange(10), 16)


def test_capped_length_is_stored_under_the_length_used(tiny_dir, tmp_path):
    """A requested length above max_position_embeddings is measured at the maximum and stored under it, once."""
    import json
    import shutil

    from pipsteps.surgery import load_model, load_tokenizer
    from pipsteps.textdata import read_rows

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32}))
    datasets = json.dumps([{"name": "heldout", "source": "embedded:heldout"}])
    out = run(EvalConfig(datasets=datasets, seq_lens=(16, 64, 128), max_tokens=256, threads=1), model_dir)
    assert set(out["ppl"]["heldout"]) == {"16", "32"}  # never "64" or "128": those were not measured
    assert out["seq_len_capped"] == {"64": 32, "128": 32}
    model, tok = load_model(model_dir, "cpu"), load_tokenizer(model_dir)
    ids = torch.tensor(tok("\n\n".join(read_rows("embedded:heldout")))["input_ids"])[:256]
    for L in (16, 32):
        assert out["ppl"]["heldout"][str(L)] == pytest.approx(perplexity(model, ids, L)[0], rel=1e-6)
    uncapped = run(EvalConfig(datasets=datasets, seq_lens=(16,), max_tokens=256, threads=1), tiny_dir)
    assert uncapped["seq_len_capped"] == {} and set(uncapped["ppl"]["heldout"]) == {"16"}
