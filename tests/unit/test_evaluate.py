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
