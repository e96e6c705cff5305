"""The comparison protocol: loader errors, the table generator on hand-made results, the regeneration check of
docs/results.md, a dry run and a real resumable run of a two-cell protocol on the tiny model."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import compare as compare_module  # noqa: E402
import protocol  # noqa: E402
import results_doc  # noqa: E402

TINY = {
    "name": "tiny-two-cells",
    "model": "tiny:llama",
    "domains": {"embedded": {"source": "embedded:calibration"}},
    "seeds": [0],
    "calibration": {"n_samples": 4, "seq_len": 32},
    "blocks": [{"unit": "width", "ratio": 0.2, "methods": ["pip", "random"], "recovery": True},
               {"unit": "depth", "ratio": 0.2, "methods": ["pip_oneshot-fisher_diff", "taylor"]}],
    "eval": {"primary": "heldout", "ppl": {"seq_len": 32, "max_tokens": 256,
                                           "datasets": {"heldout": {"source": "embedded:heldout"}}}},
    "recovery": {"source": "embedded:heldout", "format": "text", "cutoff": 32, "batch_size": 2, "micro_batch": 2,
                 "max_steps": 2, "val_size": 4, "eval_steps": 1, "save_steps": 1},
    "settings": {"prune.width.rounds": 2},
}


def write(tmp_path: Path, raw: dict, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, words", [
    (lambda r: r["blocks"][0].update(methods=["pip", "wanda"]), ["wanda (width)"]),
    (lambda r: r["blocks"][0].update(methods=["sleb"]), ["sleb (width)"]),  # depth-only method at width
    (lambda r: r["blocks"][0].update(unit="heads"), ["unknown unit", "heads"]),
    (lambda r: r["domains"].update(c4={"source": "embedded:c4"}), ["unknown domain", "c4 (embedded:c4)"]),
    (lambda r: r["domains"].update(x={"source": "/nonexistent/x.txt"}), ["unknown domain", "x (/nonexistent"]),
    (lambda r: r.update(typo=1), ["unknown key", "typo"]),
    (lambda r: r["blocks"][0].update(methods=["pip@llm"]), ["unknown view 'llm'", "pip@llm"]),
    (lambda r: r["eval"].update(primary="wikitext2"), ["eval.primary", "wikitext2"]),
])
def test_loader_refuses_with_one_line(tmp_path, edit, words):
    raw = copy.deepcopy(TINY)
    edit(raw)
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.load(write(tmp_path, raw))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_cells_and_spec_hash():
    proto = protocol.Protocol(Path("p.yaml"), {**TINY, "seeds": [0, 1],
                                               "domains": {"a": {"source": "x"}, "b": {"source": "y"}}})
    names = [c.name for c in proto.cells()]
    assert names[:4] == ["width-r0.2-a-s0", "width-r0.2-b-s0", "width-r0.2-a-s1", "width-r0.2-b-s1"]
    assert len(names) == 8 and proto.cells()[1].workdir == "b-s0"
    first = proto.cells()[0]
    changed = protocol.Protocol(Path("p.yaml"), {**proto.raw, "calibration": {"n_samples": 8, "seq_len": 32}})
    assert proto.spec_hash(first) != changed.spec_hash(first)  # a finished cell of another spec is stale


def test_renamed_workflow_keys_keep_finished_cells_current():
    """Settings keys renamed in the workflow config (prune.width_score -> prune.width.score) hash under their first
    names, so the rename leaves the committed cells current; another value still makes them stale."""
    old = protocol.Protocol(Path("p.yaml"), {**TINY, "settings": {"prune.width_score": "taylor_diff"}})
    new = protocol.Protocol(Path("p.yaml"), {**TINY, "settings": {"prune.width.score": "taylor_diff"}})
    other = protocol.Protocol(Path("p.yaml"), {**TINY, "settings": {"prune.width.score": "fisher_diff"}})
    cell = new.cells()[0]
    assert new.spec_hash(cell) == old.spec_hash(cell) != other.spec_hash(cell)
    real = protocol.load(REPO / "bench" / "protocol.yaml")
    for c in real.cells():
        done = REPO / "bench" / "results" / real.name / f"{c.name}.json"
        if done.is_file():
            assert json.loads(done.read_text())["spec_hash"] == real.spec_hash(c), c.name


def fake_cell(domain: str, seed: int, ppl: dict[str, float], unit: str = "width") -> dict:
    variants = {m: {"ppl": {"wt": v, "ho": 2 * v}, "zero_shot": None, "recovered_ppl": None}
                for m, v in ppl.items()}
    best_pip = min((m for m in ppl if m.startswith("pip")), key=ppl.get)
    best_base = min((m for m in ppl if not m.startswith("pip")), key=ppl.get)
    variants[best_pip]["zero_shot"] = {"avg": 0.4, "avg_wo_boolq": 0.35, "tasks": {}}
    return {"cell": {"unit": unit, "ratio": 0.2, "domain": domain, "seed": seed}, "variants": variants,
            "best_pip": best_pip, "best_baseline": best_base, "wall_s": {"prune_ppl": 100.0, "zero_shot": 20.0}}


FAKE_PROTO = {"name": "fake", "model": "m", "domains": {"a": {"source": "x"}, "b": {"source": "y"}},
              "seeds": [0, 1, 2], "calibration": {"n_samples": 10, "seq_len": 128},
              "blocks": [{"unit": "width", "ratio": 0.2, "methods": ["pip", "taylor", "taylor_sq"]}],
              "eval": {"primary": "wt", "ppl": {"seq_len": 128, "max_tokens": 100,
                                                "datasets": {"wt": {"source": "w"}, "ho": {"source": "h"}}}}}


def test_tables_means_paired_wins_and_rule():
    # domain a: taylor is the best baseline (mean 100 vs 110); domain b: taylor_sq (mean 50 vs 60)
    cells = [fake_cell("a", 0, {"pip": 90, "taylor": 100, "taylor_sq": 110}),
             fake_cell("a", 1, {"pip": 95, "taylor": 98, "taylor_sq": 108}),
             fake_cell("a", 2, {"pip": 99, "taylor": 102, "taylor_sq": 112}),
             fake_cell("b", 0, {"pip": 45, "taylor": 60, "taylor_sq": 50}),
             fake_cell("b", 1, {"pip": 48, "taylor": 61, "taylor_sq": 49}),
             fake_cell("b", 2, {"pip": 55, "taylor": 59, "taylor_sq": 51})]
    text = results_doc.render(FAKE_PROTO, cells, None)
    # taylor on domain a: mean 100, sample std 2; per seed 100 / 98 / 102
    assert "| `taylor` | 100.0 ± 2.0 (100.0 / 98.0 / 102.0) |" in text
    assert "a: `taylor`, b: `taylor_sq`" in text
    rel = (90 / 100 + 95 / 98 + 99 / 102 + 45 / 50 + 48 / 49 + 55 / 51) / 6 - 1
    assert f"| `pip` | 5 of 6 | {rel * 100:.1f} | `pip` beats the best non-PIP method |" in text
    assert "Cells: 6 of 6\n" in text and "missing (the dense run" in text
    cells[2]["variants"]["pip"]["ppl"]["wt"] = 150  # a second loss: 4 of 6 is no clear difference
    assert "| `pip` | 4 of 6 |" in results_doc.render(FAKE_PROTO, cells, None)
    assert "no clear difference" in results_doc.render(FAKE_PROTO, cells, None)


def test_tables_report_missing_cells():
    cells = [fake_cell("a", 0, {"pip": 90, "taylor": 100}), fake_cell("b", 0, {"pip": 40, "taylor": 50})]
    text = results_doc.render(FAKE_PROTO, cells, None)
    assert "Cells: 2 of 6; missing: width-r0.2-a-s1, width-r0.2-b-s1, width-r0.2-a-s2, width-r0.2-b-s2" in text
    assert "| `pip` | 2 of 2 |" in text and "incomplete (2 of 6 paired cells)" in text
    assert "(90.0 / – / –)" in text  # the missing seeds are shown as such, not dropped


def test_summary_names_the_baseline_ranks_the_variants_and_pairs_zero_shot():
    # one best baseline in both domains (taylor): the verdict names it; pip loses 6 of 6, pip-fisher_diff wins 6
    cells = [fake_cell(d, s, {"pip": 130, "pip-fisher_diff": 90 + s, "pip-fisher_ps": 95 + s, "taylor": 100,
                              "taylor_sq": 120}) for d in "ab" for s in (0, 1, 2)]
    for c in cells:  # zero-shot: fake_cell evaluates the best PIP variant; the baseline too
        c["variants"]["taylor"]["zero_shot"] = {"avg": 0.5, "avg_wo_boolq": 0.45, "tasks": {}}
    rows = results_doc.summary(FAKE_PROTO, cells)
    rel = statistics.fmean([(90 + s) / 100 - 1 for s in (0, 1, 2)])
    # the best PIP method of the (only) view first, then `pip` itself; pip-fisher_ps, neither, is left out
    assert rows[2:] == [
        f"| width 20% | 6 of 6 | `pip-fisher_diff` | 6 of 6 (`taylor`) | {rel * 100:+.1f}% | "
        "40.0 / 35.0 vs 50.0 / 45.0 (6 cells) | `pip-fisher_diff` beats `taylor` |",
        "| width 20% | 6 of 6 | `pip` | 0 of 6 (`taylor`) | +30.0% | – | `taylor` beats `pip` |"]
    assert results_doc.summary({**FAKE_PROTO, "blocks": [{"unit": "depth", "ratio": 0.2}]}, cells)[2] == \
        "| depth 20% | 0 of 6 | – | – | – | – | no cell yet |"


def test_summary_flags_views_that_came_out_identical():
    cells = [fake_cell("a", s, {"pip": 90, "pip@guided": 80, "pip@llm": 80, "taylor": 100}) for s in (0, 1)]
    for c, llm_hash in zip(cells, ("g0", "other")):  # seed 0: the llm view came out as the guided one
        c["calibration"] = {"default": {"calibration_hash": "r"}, "guided": {"calibration_hash": f"g{c['cell']['seed']}"},
                            "llm": {"calibration_hash": llm_hash}}
    rows = results_doc.summary(FAKE_PROTO, cells)
    # the best of each view: pip@guided and pip@llm tie (the first listed wins), pip is the rule-based view's best
    assert [r.split(" | ")[2] for r in rows[2:5]] == ["`pip@guided`", "`pip@llm`", "`pip`"]
    assert rows[-1] == ("The `llm` view is the `guided` view's calibration text (same calibration hash) in 1 of 2 "
                        "cells: there, `@llm` variants repeat the `@guided` ones.")


def test_llm_view_acceptance_is_tabulated_per_cell_and_counted_once_per_calibration():
    """The `llm` view's counts per cell (– for a cell recorded without them); the summary sums each calibration text
    once, though the width and the depth cell of a domain and seed share it."""
    proto = {**FAKE_PROTO, "blocks": [{"unit": "width", "ratio": 0.2}, {"unit": "depth", "ratio": 0.2}]}
    counts = {("a", 0): (35, 1, 142), ("a", 1): (38, 0, 150), ("b", 0): (108, 2, 128)}
    cells = []
    for unit in ("width", "depth"):
        for d, s in [("a", 0), ("a", 1), ("b", 0), ("b", 1)]:
            c = fake_cell(d, s, {"pip": 90, "pip@llm": 85, "taylor": 100}, unit)
            llm = {"generator": "llm", "calibration_hash": f"h{d}{s}"}
            if (d, s) in counts:
                prop, acc, fill = counts[(d, s)]
                llm |= {"llm_proposed": prop, "llm_accepted": acc, "acceptance_rate": acc / prop,
                        "fallback_edits": fill, "generation_s": 64.2}
            c["calibration"] = {"default": {"calibration_hash": f"r{d}{s}"}, "llm": llm}
            cells.append(c)
    text = results_doc.render(proto, cells, None)
    width = text.partition("## width")[2].partition("## depth")[0]
    assert "| a s0 | `llm` | 35 | 1 | 2.9 | 142 | 64 |" in width
    assert "| b s0 | `llm` | 108 | 2 | 1.9 | 128 | 64 |" in width
    assert "| b s1 | `llm` | – | – | – | – | – |" in width  # recorded before the counts were kept
    assert width.count("| `llm` |") == 4 and text.count("| a s1 | `llm` | 38 | 0 | 0.0 | 150 | 64 |") == 2
    assert results_doc.summary(proto, cells)[-1] == (
        "The instruction model's edits passed validation 3 times in 181 proposals over the 3 calibration texts of "
        "the `llm` view; the guided generator chose the rest.")
    assert "instruction model" not in results_doc.render(FAKE_PROTO, [fake_cell("a", 0, {"pip": 9, "taylor": 10})],
                                                         None)


def test_pip_methods_are_paired_with_the_noise_control_of_their_base_method():
    # pip-fisher_diff beats the control in every cell; pip in 4 (no clear difference); taylor has no control pairing
    ctl = [100, 100, 100, 100, 100, 100]
    fd = [70, 80, 90, 60, 95, 99]
    pip = [90, 95, 99, 98, 110, 120]
    cells = [fake_cell(d, s, {"pip": c, "pip-fisher_diff": f, "pip-noise_control": n, "pip-noise_control@guided": n,
                              "taylor": 100})
             for (d, s), c, f, n in zip([(d, s) for d in "ab" for s in (0, 1, 2)], pip, fd, ctl)]
    rel = statistics.fmean(f / 100 - 1 for f in fd)
    text = results_doc.render(FAKE_PROTO, cells, None)
    assert f"| `pip-fisher_diff` | `pip-noise_control` | 6 of 6 | {rel * 100:.1f} | `pip-fisher_diff` beats " \
           "`pip-noise_control` |" in text
    assert "| `pip` | `pip-noise_control` | 4 of 6 |" in text and "no clear difference" in text
    table = text.partition("more than gradient noise?\n\n")[2].partition("\n\n")[0]
    assert len(table.splitlines()) == 4  # header, rule, pip, pip-fisher_diff: no taylor, no control against itself
    note = results_doc.summary(FAKE_PROTO, cells)[-1]
    assert "Against the noise control (" in note and f"`pip-fisher_diff` against `pip-noise_control` wins 6 " \
        f"of 6, {rel * 100:+.1f}%, `pip-fisher_diff` beats `pip-noise_control`" in note
    plain = [fake_cell("a", 0, {"pip": 90, "taylor": 100})]
    assert "noise control" not in results_doc.render(FAKE_PROTO, plain, None)


def test_runs_shared_with_the_workspace_protocol_are_compared_cell_by_cell():
    """The views page sets the methods it shares with its workspace protocol beside that protocol's figures: identical
    where the cached jobs were reused, otherwise the largest relative difference and its method."""
    here = [fake_cell("a", 0, {"pip": 90, "pip@guided": 80, "taylor": 101}),
            fake_cell("b", 0, {"pip": 50, "taylor": 60}), fake_cell("a", 1, {"pip": 70, "taylor": 75})]
    there = [fake_cell("a", 0, {"pip": 90, "taylor": 100}), fake_cell("b", 0, {"pip": 50, "taylor": 60})]
    for c, commit in zip(here + there, ["1111111aa", "1111111aa", "1111111aa", "2222222bb", "3333333cc"]):
        c["git_commit"] = commit
    proto = {**FAKE_PROTO, "workspace": "main"}
    text = results_doc.render(proto, here, None, "protocol-views.yaml", there)
    assert "## Runs shared with `main`" in text
    assert "| width-r0.2-a-s0 | 2222222 / 1111111 | 2 | 1 | +1.000 | `taylor` |" in text  # pip@guided: not shared
    assert "| width-r0.2-b-s0 | 3333333 / 1111111 | 2 | 2 | +0.000 | – |" in text
    assert "width-r0.2-a-s1 |" not in text.partition("## Runs shared")[2].partition("## Wall")[0]  # no run there
    assert "## Runs shared" not in results_doc.render(proto, here, None)


def test_llm_made_views_are_paired_with_the_rule_based_view_of_the_same_method():
    # pip@guided beats pip in 5 cells and ties in one (a tie is neither a win nor a loss): 5 of 6 is a claim
    ppl = [(80, 90), (85, 90), (70, 75), (60, 66), (91, 92), (90, 90)]
    cells = [fake_cell(d, s, {"pip": b, "pip@guided": a, "taylor": 100})
             for (d, s), (a, b) in zip([(d, s) for d in "ab" for s in (0, 1, 2)], ppl)]
    rel = statistics.fmean(a / b - 1 for a, b in ppl)
    text = results_doc.render(FAKE_PROTO, cells, None)
    assert (f"| `pip@guided` | `pip` | 5 of 6 | {rel * 100:.1f} | `pip@guided` beats `pip` |") in text
    rows = results_doc.summary(FAKE_PROTO, cells)
    assert rows[-1] == ("Against the rule-based view of the same method (paired): width 20%: `pip@guided` against "
                        f"`pip` wins 5 of 6, {rel * 100:+.1f}%, `pip@guided` beats `pip`.")
    cells[0]["variants"]["pip@guided"]["ppl"]["wt"] = 95  # a loss: 4 wins, 1 loss, 1 tie
    assert "| `pip@guided` | `pip` | 4 of 6 |" in results_doc.render(FAKE_PROTO, cells, None)
    assert results_doc.summary(FAKE_PROTO, cells)[-1].endswith("no clear difference.")
    no_views = [fake_cell("a", 0, {"pip": 90, "taylor": 100})]
    assert "rule-based view" not in results_doc.render(FAKE_PROTO, no_views, None)


def test_readme_block_is_replaced_between_its_markers_only(tmp_path):
    begin = "<!-- results_doc fake: generated from bench/results/fake, do not edit -->"
    end = "<!-- end results_doc fake -->"
    readme = f"intro\n{begin}\nold row\n{end}\noutro\n"
    assert results_doc.readme_with(readme, "fake", ["| a |", "| b |"]) == f"intro\n{begin}\n| a |\n| b |\n{end}\noutro\n"
    assert results_doc.readme_with(readme, "other", ["| a |"]) == readme  # no markers for that protocol


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "bench").glob("protocol*.yaml")))
def test_committed_results_doc_is_regenerated_bit_for_bit(tmp_path, name):
    cmd = [sys.executable, str(REPO / "bench" / "results_doc.py"), "--protocol", str(REPO / "bench" / name), "--check"]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    doc = tmp_path / "results.md"
    doc.write_text(results_doc.doc_path(Path(name)).read_text() + "| a figure typed by hand | 1.0 |\n")
    bad = subprocess.run([*cmd, "--out", str(doc)], capture_output=True, text=True)
    assert bad.returncode == 1 and f"run python bench/results_doc.py --protocol {REPO / 'bench' / name}" in bad.stderr
    # the README's generated summary is checked too: a hand-edited row fails
    name_in_readme = yaml.safe_load((REPO / "bench" / name).read_text())["name"]
    readme = (REPO / "README.md").read_text()
    begin = f"<!-- results_doc {name_in_readme}: generated from bench/results/{name_in_readme}, do not edit -->"
    assert begin in readme, f"README.md has no generated summary of {name}"
    edited = tmp_path / "README.md"
    edited.write_text(readme.replace(begin, begin + "\n| a row typed by hand |"))
    bad = subprocess.run([*cmd, "--readme", str(edited)], capture_output=True, text=True)
    assert bad.returncode == 1 and f"{edited} is not what" in bad.stderr


def compare(tmp_path: Path, proto: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "bench" / "compare.py"), str(proto), "--workdir", str(tmp_path / "work"),
           "--results", str(tmp_path / "results"), "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == rc, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_dry_run_lists_the_workflow_runs(tmp_path):
    raw = copy.deepcopy(TINY)  # a named perturbed view runs in its own work directory (its own calibration)
    raw["views"] = {"noise": {"perturbation.generator": "token_noise"}}
    raw["blocks"][0]["methods"].append("pip@noise")
    out = compare(tmp_path, write(tmp_path, raw), "--dry-run").stdout
    assert "[1/2] width-r0.2-embedded-s0: todo" in out and "[2/2] depth-r0.2-embedded-s0: todo" in out
    assert "run in embedded-s0: " in out and "run in embedded-s0-noise: " in out
    assert "results/width/pip/r0.2/eval/metrics.json results/width/random_s0/r0.2/eval/metrics.json\n" in out
    noise = yaml.safe_load((tmp_path / "work/tiny-two-cells/embedded-s0-noise/config.yaml").read_text())
    assert noise["perturbation"]["generator"] == "token_noise" and noise["prune"]["grid"]["methods"] == ["pip"]
    assert "results/depth/pip_oneshot-fisher_diff/r0.2/eval/metrics.json results/depth/taylor/r0.2" in out
    assert out.count("LoRA recovery") == 1  # only the width block asks for it
    # Snakemake's own job list of each cell: one model, one plan and one PPL job per method
    for rule, n in (("prepare_model", 1), ("plan_rounds", 2), ("evaluate_ppl", 2), ("plan_rounds", 1)):
        assert any(line.split() == [rule, str(n)] for line in out.splitlines()), (rule, out)
    assert not (tmp_path / "results").exists()  # nothing ran


def test_real_run_writes_cells_and_resumes(tmp_path):
    """One real cell (the width block, with recovery), run twice: the second run recomputes nothing."""
    path = write(tmp_path, {**TINY, "blocks": TINY["blocks"][:1]})
    first = compare(tmp_path, path).stdout
    assert "1 cells, 0 done, 1 to run" in first and "[1/1] width-r0.2-embedded-s0:" in first
    res = tmp_path / "results" / "tiny-two-cells"
    width = json.loads((res / "width-r0.2-embedded-s0.json").read_text())
    assert set(width["variants"]) == {"pip", "random"} and width["best_pip"] == "pip"
    assert width["best_baseline"] == "random" and width["spec_hash"]
    for m in ("pip", "random"):  # both chosen variants were recovered with the same budget
        v = width["variants"][m]
        assert v["ppl"]["heldout"] > 1 and v["recovered_ppl"]["heldout"] > 1 and 0.15 < v["achieved_ratio"] < 0.25
    assert width["config"]["calibration"]["seed"] == 0 and width["packages"]["torch"] and width["git_commit"]
    assert json.loads((res / "dense.json").read_text())["ppl"]["heldout"] > 1
    stamp = (res / "width-r0.2-embedded-s0.json").stat().st_mtime_ns
    again = compare(tmp_path, path).stdout  # finished cells are never recomputed
    assert "1 done, 0 to run" in again and (res / "width-r0.2-embedded-s0.json").stat().st_mtime_ns == stamp
    dense_stamp = (res / "dense.json").stat().st_mtime_ns
    shutil.rmtree(tmp_path / "work")  # another machine: the committed results stay, the work directories are gone
    model = compare_module.run_dense(protocol.load(path), tmp_path / "work" / "tiny-two-cells", res, 2)
    assert (Path(model) / "config.json").is_file() and (res / "dense.json").stat().st_mtime_ns == dense_stamp
    assert not (tmp_path / "work/tiny-two-cells/dense/results/base/eval").exists()  # only the model was redone
    # refreshing the calibration records: a record without its newer fields gets them back from the work directory
    # (rebuilt there, as on another machine), and one that does not match the cell's calibration is refused
    cell_json = res / "width-r0.2-embedded-s0.json"
    record = json.loads(cell_json.read_text())
    assert record["calibration"]["default"]["edit_rate"] > 0.1
    default = record["calibration"]["default"]
    old = {**record, "calibration": {"default": {k: default[k] for k in ("calibration_hash", "edit_rate")}}}
    cell_json.write_text(json.dumps(old))
    assert "calibration record updated" in compare(tmp_path, path, "--refresh-calibration").stdout
    assert json.loads(cell_json.read_text())["calibration"] == record["calibration"]
    cell_json.write_text(json.dumps({**record, "calibration": {"default": {**record["calibration"]["default"],
                                                                           "calibration_hash": "0" * 16}}}))
    bad = compare(tmp_path, path, "--refresh-calibration", rc=1)
    assert "is not the one the cell ran on (calibration_hash differ)" in bad.stderr
    assert json.loads(cell_json.read_text())["calibration"]["default"]["calibration_hash"] == "0" * 16  # left as is
    cell_json.write_text(json.dumps(record))
    doc = tmp_path / "results.md"
    subprocess.run([sys.executable, str(REPO / "bench" / "results_doc.py"), "--protocol", str(path),
                    "--results", str(tmp_path / "results"), "--out", str(doc)], check=True)
    text = doc.read_text()
    assert "Cells: 1 of 1\n" in text and "## width, 0.2 of the parameters" in text
    assert f"{width['variants']['pip']['ppl']['heldout']:.1f}" in text
