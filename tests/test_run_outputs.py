"""What a run shows: the width-score pictures, hyphenated grid variants in every plot and table, and the short
summary printed on the terminal at the end of a run (a real tiny width run through the snakemake CLI)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import E2E, snakemake
from pipsteps import plots_width
from pipsteps.io import PipError
from pipsteps.plots import PlotConfig, metric_vs_ratio_figure, plot_width_scores, series_name
from pipsteps.summarize import brief


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _layers(n: int) -> list[dict]:
    return [{"index": i, "orig_index": i, "score": None} for i in range(n)]


# Three layers of 2 KV groups and 4 channels, layer 0 protected. Round 1 removes KV group 1 of layer 2 and
# channels 0 (layer 1) and 1 (layer 2); round 2 scores the kept groups at their new positions and removes KV group 0
# of layer 1 and the channels at position 1 of layer 1 (original 2) and position 0 of layer 2 (original 0).
ROUND1 = {"round": 1, "score": "fisher_diff", "layer_scores": _layers(3), "removed": [],
          "group_scores": {"attn": [[5, 6], [1, 3], [2, 0.5]],
                           "mlp": [[1, 2, 3, 4], [0.1, 0.5, 0.2, 0.9], [0.3, 0.05, 0.6, 0.7]]},
          "removed_groups": {"kv_heads": {"2": [1]}, "heads": {"2": [2, 3]}, "channels": {"1": [0], "2": [1]}},
          "kept": []}
ROUND2 = {**ROUND1, "round": 2,
          "group_scores": {"attn": [[5, 6], [1, 3], [2]], "mlp": [[1, 2, 3, 4], [0.5, 0.2, 0.9], [0.3, 0.6, 0.7]]},
          "removed_groups": {"kv_heads": {"1": [0]}, "heads": {"1": [0, 1]}, "channels": {"1": [2], "2": [0]}}}


def test_replay_maps_every_score_to_its_original_group():
    lrs = {(lr.round, lr.layer): lr for lr in plots_width.replay([ROUND1, ROUND2])}
    assert len(lrs) == 6
    r2l1, r2l2 = lrs[2, 1], lrs[2, 2]
    assert r2l1.groups == {"attn": [0, 1], "mlp": [1, 2, 3]} and r2l2.groups == {"attn": [0], "mlp": [0, 2, 3]}
    assert r2l1.removed["mlp"].tolist() == [False, True, False] and r2l1.removed["attn"].tolist() == [True, False]
    assert r2l2.removed["mlp"].tolist() == [True, False, False] and r2l2.scores["mlp"].tolist() == [0.3, 0.6, 0.7]
    rows = {(r["round"], r["layer"]): r for r in plots_width.rows("width/pip-fisher_diff/r0.5", [ROUND1, ROUND2],
                                                                   candidates=[1, 2])}
    assert rows[1, 0]["protected"] == 1 and rows[1, 0]["channels_removed"] == 0 and rows[1, 0]["kv_removed"] == "-"
    assert rows[1, 2]["kv_removed"] == "1" and rows[1, 2]["ch_max_removed"] == "0.05"
    assert rows[2, 1]["kv_removed"] == "0" and rows[2, 1]["kv_scores"] == "0:1 1:3"
    assert rows[2, 1]["channels"] == 3 and rows[2, 1]["ch_max_removed"] == "0.2" and rows[2, 1]["ch_median"] == "0.5"
    assert rows[2, 2]["kv_groups"] == 1 and rows[2, 2]["kv_scores"] == "0:2"


def test_replay_refuses_rounds_that_do_not_follow_each_other():
    broken = {**ROUND2, "group_scores": {"attn": ROUND2["group_scores"]["attn"], "mlp": [[1, 2, 3, 4]] * 3}}
    with pytest.raises(PipError, match="round 2, layer 1: 4 mlp scores for 3 kept groups"):
        plots_width.replay([ROUND1, broken])


def test_width_score_plot_has_one_block_per_scored_width_variant(tmp_path):
    r = tmp_path / "results"
    rounds = {"width/pip-fisher_diff/r0.5": [ROUND1, ROUND2],
              "width/pip_oneshot-taylor_diff/r0.5": [{**ROUND1, "score": "taylor_diff"}],
              "width/random_s1/r0.5": [{**ROUND1, "score": "random"}, {**ROUND2, "score": "random"}],
              "depth/pip/r0.5": [{"round": 1, "score": "norm_diff", "layer_scores": [], "removed": []}]}
    for v, rds in rounds.items():
        _write(r / v / "plan.json", {"rounds": len(rds), "candidates": [1, 2]})
        for rd in rds:
            _write(r / v / f"round_{rd['round']}/round.json", rd)
    plot_width_scores(r, list(rounds), 3, tmp_path / "w.png", tmp_path / "w.tsv", PlotConfig(dpi=40))
    assert (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "w.tsv", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    scored = ["width/pip-fisher_diff/r0.5", "width/pip_oneshot-taylor_diff/r0.5"]
    assert sorted({row["variant"] for row in table}) == scored
    assert len(table) == 2 * 3 + 1 * 3  # rounds × layers of each scored variant
    fig = plots_width.figure(rounds, 3, {v: [1, 2] for v in rounds})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split(":")[0] for t in titles] == [v for v in scored for _ in range(3)]  # KV, MLP removed, MLP scores
    empty = plots_width.figure({"width/random/r0.5": rounds["width/random_s1/r0.5"]}, 3, {})
    assert "no width variant with scores" in empty.axes[0].texts[0].get_text()


def test_metric_vs_ratio_has_every_hyphenated_variant(tmp_path):
    stages = [("dense", 10), ("width/pip-fisher_diff/r0.2", 30), ("depth/pip_oneshot-gap_greedy/r0.2", 40),
              ("depth/random_s0/r0.2", 50), ("depth/random_s1/r0.2", 70), ("width/pip/r0.2/recovered", 20)]
    _write(tmp_path / "s.tsv", "stage\tppl_x@8\n" + "".join(f"{s}\t{p}\n" for s, p in stages))
    fig = metric_vs_ratio_figure(tmp_path / "s.tsv")
    labels = set(fig.axes[0].get_legend_handles_labels()[1])
    assert labels == {"dense", "width/pip-fisher_diff", "depth/pip_oneshot-gap_greedy", "depth/random",
                      "width/pip (recovered)"}
    assert series_name("depth/random_s12/r0.35") == "depth/random" and series_name("dense") is None
    _write(tmp_path / "bad.tsv", "stage\tppl_x@8\ndense\t1\ndepth/pip-Fisher/r0.2\t2\n")
    with pytest.raises(PipError, match="stage 'depth/pip-Fisher/r0.2' is not unit/method/rRATIO"):
        metric_vs_ratio_figure(tmp_path / "bad.tsv")


def test_brief_table_lines_up_params_ppl_and_decode_speedup():
    tsv = ("stage\tmethod\tparams\tratio\tppl_h@64\tzs_avg\tdecode_tok_s@bs1\tdecode_tok_s@bs4\n"
           "dense\t-\t2000000\t0.0\t10.5\t0.5\t100.0\t300.0\n"
           "width/pip-fisher_diff/r0.2\tpip\t1600000\t0.2004\t12.25\t0.45\t125.0\t350.0\n")
    text = brief(tsv)
    lines = text.splitlines()
    assert lines[0] == "PIP summary: dense vs 1 pruned variant"
    assert lines[2].split() == ["stage", "params", "removed", "ppl", "h@64", "zero-shot", "avg", "decode", "tok/s",
                                "bs1"]
    assert lines[3].split() == ["dense", "2.00M", "-", "10.5", "0.5", "100.0"]
    assert lines[4].split() == ["width/pip-fisher_diff/r0.2", "1.60M", "20.0%", "12.25", "0.45", "125.0", "(1.25x)"]
    assert len({len(line) for line in lines[2:5]}) == 1  # aligned columns
    assert "results/summary.md" in lines[-1]


# ------------------------------------------ a real width run: a hyphenated PIP grid score and the default baselines
# One variant of each kind a width plot or table treats differently: a hyphenated PIP score, a scored non-PIP baseline
# and an unscored one (plain `pip` runs in the grid and e2e runs, tests/conftest.py).
WIDTH_VARIANTS = ["width/pip-fisher_diff/r0.2", "width/taylor_sq/r0.2", "width/random/r0.2"]


@pytest.fixture(scope="module")
def width_run(tmp_path_factory) -> tuple[Path, str]:
    """(work directory, stdout) of a complete tiny width run: pip-fisher_diff, taylor_sq and random."""
    cfg = yaml.safe_load(E2E.read_text())
    cfg["prune"] = {"unit": "width", "method": "pip", "baselines": ["taylor_sq", "random"], "target_ratio": 0.2,
                    "width": {"rounds": 2}, "grid": {"methods": ["pip-fisher_diff", "taylor_sq", "random"]}}
    cfg["eval"].update(seq_lens=[16], max_tokens=256)
    cfg["mlflow"] = {"enabled": False}
    workdir = tmp_path_factory.mktemp("width")
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return workdir, snakemake(workdir).stdout


def test_run_ends_with_the_summary_table_on_the_terminal(width_run):
    workdir, out = width_run
    text = (workdir / "results/summary.txt").read_text()
    assert text in out and "PIP summary: dense vs 3 pruned variants" in out
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith(("dense", "width/"))}
    assert list(lines) == ["dense", *WIDTH_VARIANTS]
    with open(workdir / "results/summary.tsv", newline="") as f:
        table = {r["stage"]: r for r in csv.DictReader(f, delimiter="\t")}
    for stage, cells in lines.items():
        row = table[stage]
        assert cells[1] == f"{int(row['params']) / 1e6:.2f}M" and cells[3] == row["ppl_heldout@16"]
        assert cells[4] == row["decode_tok_s@bs1"]
        if stage != "dense":
            assert cells[2] == f"{float(row['ratio']):.1%}"
            assert cells[5] == f"({float(row['decode_tok_s@bs1']) / float(table['dense']['decode_tok_s@bs1']):.2f}x)"
    assert "HTML report: snakemake --report" in out


def test_dry_runs_and_no_op_reruns_print_no_table(width_run):
    workdir, _ = width_run
    assert "PIP summary" not in snakemake(workdir).stdout  # nothing to be done
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg["eval"]["seq_lens"] = [8]
    (workdir / "alt.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workdir, "-n", config=workdir / "alt.yaml")
    assert "summarize" in proc.stdout and "PIP summary" not in proc.stdout


def test_width_run_draws_width_scores_of_every_scored_variant(width_run):
    workdir, _ = width_run
    plots = workdir / "results/plots"
    assert {p.name for p in plots.iterdir()} == {"width_scores.png", "width_scores.tsv", "removed_layers.png",
                                                 "metric_vs_ratio.png", "latency.png"}  # no depth: no layer scores
    with open(plots / "width_scores.tsv", newline="") as f:
        table = list(csv.DictReader(f, delimiter="\t"))
    assert sorted({r["variant"] for r in table}) == sorted(WIDTH_VARIANTS[:2])  # random has no scores
    for v in WIDTH_VARIANTS[:2]:
        plan = json.loads((workdir / "results" / v / "plan.json").read_text())
        rows = [r for r in table if r["variant"] == v]
        assert len(rows) == plan["rounds"] * plan["num_layers"]
        assert sum(int(r["channels_removed"]) for r in rows) == plan["channels_total"]
        assert sum(len(r["kv_removed"].split()) for r in rows if r["kv_removed"] != "-") == plan["kv_groups_total"]
        assert all(int(r["channels_removed"]) == 0 for r in rows if int(r["layer"]) not in plan["candidates"])
        last = json.loads((workdir / "results" / v / f"round_{plan['rounds']}/round.json").read_text())
        kept = {k["orig_index"]: k["channels"] for k in last["kept"]}
        final = {int(r["layer"]): int(r["channels"]) - int(r["channels_removed"]) for r in rows
                 if int(r["round"]) == plan["rounds"]}
        assert final == kept
    with open(workdir / "results/summary.tsv", newline="") as f:
        stages = [r["stage"] for r in csv.DictReader(f, delimiter="\t")]
    assert stages == ["dense", *WIDTH_VARIANTS]
    labels = set(metric_vs_ratio_figure(workdir / "results/summary.tsv").axes[0].get_legend_handles_labels()[1])
    assert labels == {"dense", *(v.rsplit("/", 1)[0] for v in WIDTH_VARIANTS)}


def test_report_shows_the_width_scores_with_their_caption(width_run, tmp_path):
    workdir, _ = width_run
    report = tmp_path / "report.html"
    proc = snakemake(workdir, "--report", str(report))
    out = proc.stdout + proc.stderr
    assert "Adding width_scores.png" in out and "layer_scores.png" not in out
    html = report.read_text()
    assert "MLP channel scores" in html and "width/pip-fisher_diff/r0.2" in html
    # the captions read the unit's own config block, and render without reStructuredText warnings
    assert "prune.width.score: fisher_diff" in html and "fisher_diff</tt> for PIP" in html
    assert "(WARNING" not in out
    assert "PIP summary" not in proc.stdout
