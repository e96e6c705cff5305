"""Efficiency measurement, plots and the Snakemake HTML report, on the tiny random Llama and the tiny e2e run."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, snakemake
from pipsteps.efficiency import EfficiencyConfig, generate_once, run
from pipsteps.io import PipError, count_params
from pipsteps.surgery import load_pruned, new_manifest, remove_layers, save_pruned

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def pruned_dir(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny 6-layer model with layers 1 and 3 removed, saved in the project's pruned format."""
    from transformers import AutoTokenizer

    model = load_pruned(tiny_dir)
    remove_layers(model, [1, 3])
    manifest = new_manifest(6) | {"kept_layers": [0, 2, 4, 5], "removed_layers": [1, 3]}
    out = tmp_path_factory.mktemp("pruned") / "model"
    save_pruned(model, AutoTokenizer.from_pretrained(tiny_dir), out, manifest)
    return out


@pytest.fixture(scope="module")
def effs(tiny_dir: Path, pruned_dir: Path) -> dict:
    cfg = EfficiencyConfig(prompt_len=8, new_tokens=3, batch_sizes=(1, 3), repeats=2, device="cpu", threads=1)
    return run(cfg, tiny_dir, {"depth/pip/r0.3": pruned_dir, "depth/random/r0.3": tiny_dir})


@pytest.fixture(scope="module")
def eff(effs: dict) -> dict:
    return effs["depth/pip/r0.3"]


def test_one_job_measures_the_dense_model_once_for_every_variant(effs, tiny_dir):
    assert list(effs) == ["depth/pip/r0.3", "depth/random/r0.3"]
    a, b = effs.values()
    assert a["dense"] is b["dense"]  # one measurement, shared, not one per variant
    assert b["pruned"]["model"] == str(tiny_dir) and b["achieved_ratio"] == 0.0  # the dense model as a "variant"
    assert a["pruned"]["params_total"] < b["pruned"]["params_total"]


def test_params_and_ratio_match_direct_counts(eff, tiny_dir, pruned_dir):
    dense, pruned = load_pruned(tiny_dir), load_pruned(pruned_dir)
    d, p = count_params(dense), count_params(pruned)
    assert (eff["dense"]["params_total"], eff["pruned"]["params_total"]) == (d["total"], p["total"])
    assert eff["pruned"]["params_non_embedding"] == p["non_embedding"] < eff["dense"]["params_non_embedding"]
    per_layer = sum(t.numel() for t in dense.model.layers[0].parameters())
    assert d["total"] - p["total"] == 2 * per_layer  # two identical layers removed
    assert eff["achieved_ratio"] == pytest.approx(2 * per_layer / d["total"], rel=1e-12)
    assert eff["achieved_ratio_non_embedding"] == pytest.approx(2 * per_layer / d["non_embedding"], rel=1e-12)
    assert (eff["dense"]["num_layers"], eff["pruned"]["num_layers"]) == (6, 4)
    assert eff["dense"]["weights_mb"] == pytest.approx(d["total"] * 4 / 2**20)  # fp32, tied embedding counted once


def test_latency_throughput_and_memory_are_positive_and_consistent(eff):
    assert eff["device"] == "cpu" and eff["dtype"] == "float32"
    for which in ("dense", "pruned"):
        block = eff[which]
        assert set(block["batches"]) == {"1", "3"}
        for b, m in block["batches"].items():
            assert all(math.isfinite(v) and v > 0 for v in m.values()), (which, b, m)
            # throughput and latency are two views of the same medians
            assert m["prefill_tokens_per_s"] == pytest.approx(int(b) * 8 / (m["prefill_ms"] / 1e3))
            assert m["decode_tokens_per_s"] == pytest.approx(int(b) / (m["decode_ms_per_step"] / 1e3))
        assert block["peak_mem_mb"] > block["weights_mb"] > 0
        assert block["mem_kind"] in ("rss_peak", "rss_peak_process")
    for b, sp in eff["speedup"].items():
        assert sp["prefill"] == pytest.approx(eff["dense"]["batches"][b]["prefill_ms"]
                                              / eff["pruned"]["batches"][b]["prefill_ms"])
        assert sp["decode"] == pytest.approx(eff["pruned"]["batches"][b]["decode_tokens_per_s"]
                                             / eff["dense"]["batches"][b]["decode_tokens_per_s"])


def test_timed_decode_is_real_greedy_generation(pruned_dir):
    """The KV-cache loop that is timed produces exactly the greedy continuation of a full no-cache forward."""
    model = load_pruned(pruned_dir)
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    prefill_s, decode_s, tokens = generate_once(model, prompt, 4, torch.device("cpu"))
    assert prefill_s > 0 and decode_s > 0 and tokens.shape == (2, 5)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, tokens[:, :-1]], dim=1), use_cache=False).logits
    assert torch.equal(logits[:, 6:].argmax(-1), tokens)


def test_bad_settings_fail_with_one_clear_line(tiny_dir, pruned_dir, tmp_path):
    with pytest.raises(PipError, match="eval.efficiency.repeats must be at least 1"):
        EfficiencyConfig(repeats=0)
    with pytest.raises(PipError, match="eval.efficiency.batch_sizes"):
        EfficiencyConfig(batch_sizes=(0,))
    cfg = EfficiencyConfig(prompt_len=2040, new_tokens=16, batch_sizes=(1,), repeats=1, device="cpu")
    with pytest.raises(PipError, match=r"prompt_len \+ new_tokens = 2056 exceeds the model's max_position_emb"):
        run(cfg, tiny_dir, {"depth/pip/r0.3": pruned_dir})
    for stages, error in ((["a"], "--pruned, --stages and --out need one entry per variant, got 2, 1 and 2"),
                          (["a", "a"], "--stages names a variant twice: a a")):
        proc = subprocess.run([sys.executable, "-m", "pipsteps.efficiency", "--dense", str(tiny_dir), "--pruned",
                               str(pruned_dir), str(pruned_dir), "--stages", *stages, "--out", "a.json", "b.json"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].endswith(error), proc.stderr
        assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- plots from a hand-made results tree
def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_plots_cover_depth_width_random_seeds_and_recovered_rows(tmp_path):
    """A grid-like tree: scored depth PIP, two random seeds, a width variant (kept heads/channels), a recovered row."""
    from pipsteps.plots import PlotConfig, plot_layer_scores, plot_metric_vs_ratio, plot_removed_layers, score_matrix

    r = tmp_path / "results"
    _write(r / "base/model/config.json", {"num_key_value_heads": 2, "num_attention_heads": 4, "intermediate_size": 64})
    depth = [{"round": 1, "layer_scores": [{"orig_index": i, "score": 1.0 + i} for i in range(4)],
              "removed": [{"orig_index": 0}]},
             {"round": 2, "layer_scores": [{"orig_index": i, "score": 2.0 * i} for i in (1, 2, 3)],
              "removed": [{"orig_index": 2}]}]
    unscored = [{**x, "layer_scores": [{"orig_index": 0, "score": None}]} for x in depth]
    for v, rounds in {"depth/pip/r0.5": depth, "depth/random_s0/r0.5": unscored, "depth/random_s1/r0.5": unscored,
                      "width/pip/r0.5": [{"round": 1, "layer_scores": [{"orig_index": 0, "score": None}], "removed": [],
                                          "kept": [{"orig_index": i, "heads": 2, "kv_heads": 1, "channels": 16 * i + 8}
                                                   for i in range(4)]}]}.items():
        _write(r / v / "plan.json", {"rounds": len(rounds)})
        for rd in rounds:
            _write(r / v / f"round_{rd['round']}/round.json", {"score": "norm_diff", **rd})
    _write(r / "summary.tsv", "stage\tmethod\tppl_x@8\tzs_avg\n" + "".join(
        f"{stage}\tm\t{ppl}\t{zs}\n" for stage, ppl, zs in
        [("dense", 10, 0.6), ("depth/pip/r0.5", 30, 0.5), ("depth/random_s0/r0.5", 50, 0.4),
         ("depth/random_s1/r0.5", 70, 0.4), ("width/pip/r0.5", 40, "-"), ("depth/pip/r0.5/recovered", 20, 0.55)]))
    m, removed = score_matrix(depth, 4)
    assert removed == [[0], [2]] and m[0].tolist() == [1, 2, 3, 4]
    assert math.isnan(m[1, 0]) and m[1, 1:].tolist() == [2, 4, 6]  # layer 0 is gone in round 2
    cfg, variants = PlotConfig(dpi=50), ["depth/pip/r0.5", "depth/random_s0/r0.5", "depth/random_s1/r0.5",
                                         "width/pip/r0.5"]
    plot_layer_scores(r, variants, 4, tmp_path / "a.png", cfg)
    plot_removed_layers(r, variants, 4, tmp_path / "b.png", cfg)
    plot_metric_vs_ratio(r / "summary.tsv", tmp_path / "c.png", cfg)
    sizes = {n: png_size(tmp_path / n) for n in ("a.png", "b.png", "c.png")}
    assert sizes["b.png"][1] > sizes["a.png"][1]  # three panels (depth order, KV groups, channels) vs one heatmap
    assert sizes["c.png"][0] > 1.8 * sizes["c.png"][1]  # two metric panels side by side: ppl_x@8 and zs_avg
    _write(r / "empty.tsv", "stage\tmethod\n")
    with pytest.raises(PipError, match="needs a dense row and ppl_ columns"):
        plot_metric_vs_ratio(r / "empty.tsv", tmp_path / "d.png", cfg)


# ---------------------------------------------------------------- the workflow: efficiency, plots, report
PLOTS = {"layer_scores.png", "removed_layers.png", "metric_vs_ratio.png", "latency.png"}


def test_workflow_writes_efficiency_and_summary_columns(e2e_run):
    r = e2e_run / "results"
    rows = [line.split("\t") for line in (r / "summary.tsv").read_text().splitlines()]
    table = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    for stage in ("depth/pip/r0.2", "depth/random/r0.2"):
        eff = json.loads((r / stage / "eval/efficiency.json").read_text())
        assert eff["stage"] == stage and eff["config"]["batch_sizes"] == [1, 2]
        assert eff["pruned"]["params_total"] < eff["dense"]["params_total"]
        assert eff["achieved_ratio"] == pytest.approx(float(table[stage]["ratio"]), abs=1e-4)
        for b in ("1", "2"):
            m = eff["pruned"]["batches"][b]
            assert float(table[stage][f"prefill_ms@bs{b}"]) == pytest.approx(m["prefill_ms"], abs=0.01)
            assert float(table[stage][f"decode_tok_s@bs{b}"]) == pytest.approx(m["decode_tokens_per_s"], abs=0.1)
    dense = json.loads((r / "depth/pip/r0.2/eval/efficiency.json").read_text())["dense"]
    assert float(table["dense"]["peak_mem_mb"]) == pytest.approx(dense["peak_mem_mb"], abs=0.1)
    assert json.loads((r / "depth/random/r0.2/eval/efficiency.json").read_text())["dense"] == dense  # measured once
    assert (e2e_run / "benchmarks/measure_efficiency/efficiency.tsv").read_text().startswith("s\t")
    log = (e2e_run / "logs/measure_efficiency/efficiency.log").read_text()
    assert log.count("dense model") == 1 and log.count("speedup") == 2


def test_workflow_plots_are_valid_pngs(e2e_run):
    plots = e2e_run / "results/plots"
    assert {p.name for p in plots.iterdir()} == PLOTS
    for p in plots.iterdir():
        w, h = png_size(p)
        assert w >= 300 and h >= 150, (p.name, w, h)
    assert (e2e_run / "logs/plot_results/plots.log").exists()
    assert (e2e_run / "benchmarks/plot_latency/latency.tsv").read_text().startswith("s\t")


def test_snakemake_report_builds_with_the_plots_and_the_table(e2e_run, tmp_path):
    report = tmp_path / "report.html"
    proc = snakemake(e2e_run, "--report", str(report))
    assert report.stat().st_size > 100_000, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    for name in (*PLOTS, "summary.html"):
        assert f"Adding {name}" in out, name
    html = report.read_text()
    rows = [line.split("\t") for line in (e2e_run / "results/summary.tsv").read_text().splitlines()]
    assert html.count('<table class=\\"pip-summary\\">') == 1  # the table itself, in the caption (JSON-escaped)
    for row in rows[1:]:  # every stage and its perplexity appear as table cells
        assert f"<td>{row[0]}</td>" in html and f"<td>{row[rows[0].index('ppl_heldout@64')]}</td>" in html
    assert "<th>prefill_ms@bs1</th>" in html and "acc_norm for hellaswag" in html
    assert "tiny:llama" in html  # the workflow description is rendered with the config


@pytest.mark.parametrize("change,expected", [
    ({"repeats": 3}, {"measure_efficiency": 1, "plot_latency": 1, "summarize": 1, "plot_results": 1}),
    ({"enabled": False}, {"summarize": 1, "plot_results": 1}),  # no measurement, no latency plot, no columns
])
def test_efficiency_settings_rerun_only_measurement_summary_and_plots(e2e_run, change, expected):
    from test_workflow import dry_jobs

    cfg = yaml.safe_load((e2e_run / "config.yaml").read_text())
    cfg["eval"]["efficiency"].update(change)
    alt = e2e_run / f"efficiency-{next(iter(change))}.yaml"
    alt.write_text(yaml.safe_dump(cfg))
    assert dry_jobs(e2e_run, alt) == expected | {"track_mlflow": 1, "all": 1}


def test_plot_cli_rejects_a_missing_summary(e2e_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipsteps.plots", "results", "--results", str(e2e_run / "results"),
                           "--variants", "depth/pip/r0.2", "--summary", str(tmp_path / "none.tsv"),
                           "--layer-scores", str(tmp_path / "a.png"), "--removed-layers", str(tmp_path / "b.png"),
                           "--metric-vs-ratio", str(tmp_path / "c.png"), "--table", str(tmp_path / "t.html")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and f"missing file: {tmp_path / 'none.tsv'}" in proc.stderr
