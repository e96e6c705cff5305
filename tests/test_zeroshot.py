"""Zero-shot tasks with the real lm-eval: local loaders, task definitions identical to lm-eval's own, real runs of
the tiny model (all seven tasks) and of the embedded SmolLM2 (slow), bad input, and the evaluate_tasks rule in the
workflow.

The plumbing runs on tests/fixtures/tasks: five made-up examples per task in each task's file format (conftest's
`task_fixtures`), so a clone without ../shared runs it. The tests marked `shared_data` read the real files of
../shared/data (all of them, or the first few examples of each); they skip without them, and fail under CI=true.
"""

from __future__ import annotations

import bz2
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import SHARED_DATA, TEST_CORES
from pipsteps.config import ConfigError, check_config
from pipsteps.io import PipError
from pipsteps.zeroshot import ZeroShotConfig, main, parse_limits
from pipsteps.zeroshot import run as zeroshot
from pipsteps.zeroshot_tasks import LOADERS, STANDARD_FILES, TASKS, check_tasks_config, task_config

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e" / "config.yaml"
N_SMALL = 5  # examples per task in the fixtures and in the heads of the real files

# lm-eval's own task definitions, by path inside the installed lm_eval/tasks
LM_EVAL_YAML = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml",
                "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
                "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
                "openbookqa": "openbookqa/openbookqa.yaml"}


def copy_head(task: str, src_dir: Path, dst_dir: Path, n: int) -> None:
    """The first n examples of a shared/data task file, in the same format and layout."""
    src, dst = src_dir / STANDARD_FILES[task], dst_dir / STANDARD_FILES[task]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if task == "hellaswag":
        with bz2.open(src, "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(6 * n)]
        with bz2.open(dst, "wt", encoding="utf-8") as f:
            f.writelines(lines)
        return
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    if task == "piqa":
        labels = src.with_name("valid-labels.lst")
        dst.with_name("valid-labels.lst").write_text("".join(labels.read_text().splitlines(keepends=True)[:n]))


@pytest.fixture(scope="module")
def small_data(task_fixtures) -> Path:
    """The hand-written fixtures in the shared/data layout."""
    return task_fixtures


@pytest.fixture(scope="module")
def shared_head(tmp_path_factory) -> Path:
    """The first N_SMALL examples of every real task file (tests using it carry the shared_data marker)."""
    d = tmp_path_factory.mktemp("taskdata")
    for task in TASKS:
        copy_head(task, SHARED_DATA, d, N_SMALL)
    return d


def test_loaders_read_the_fixture_files(small_data):
    """Every field of every local format, on the fixtures: labels parsed, HellaSwag unpacked from .bz2 and
    preprocessed, ARC's 3-, 4- and 5-choice and digit-labelled questions kept as they are."""
    rows = {t: LOADERS[t](small_data / STANDARD_FILES[t]) for t in TASKS}
    assert {t: len(r) for t, r in rows.items()} == dict.fromkeys(TASKS, N_SMALL)
    assert [r["label"] for r in rows["boolq"]] == [1, 0, 1, 0, 1]
    assert rows["boolq"][1]["question"] == "can penguins fly through the air"
    assert [r["label"] for r in rows["piqa"]] == [0, 1, 0, 0, 1]
    assert rows["piqa"][4]["sol2"] == "put a drop of oil on the hinges and swing the door a few times."
    assert [r["label"] for r in rows["hellaswag"]] == [2, 0, 3, 1, 2]
    assert rows["hellaswag"][1]["query"] == ("Riding a bike: A girl wheels her bicycle out of the garage. "
                                             "She checks the tyres. she")
    assert rows["hellaswag"][0]["choices"][2] == "puts the kettle on the stove and waits for it to boil."
    assert [r["answer"] for r in rows["winogrande"]] == ["1", "2", "2", "1", "1"]
    assert "  _ was closer" in rows["winogrande"][4]["sentence"]  # double spaces kept, as in the real file
    easy = rows["arc_easy"]
    assert [len(r["choices"]["text"]) for r in easy] == [4, 3, 4, 5, 4]
    assert easy[2]["choices"]["label"] == ["1", "2", "3", "4"] and easy[2]["answerKey"] == "3"
    assert easy[0]["question"] == "Which of these is a source of light?"
    assert [r["answerKey"] for r in rows["arc_challenge"]] == ["B", "C", "2", "A", "D"]
    assert [r["answerKey"] for r in rows["openbookqa"]] == ["A", "B", "C", "D", "A"]


@pytest.mark.shared_data
def test_loaders_read_every_shared_file_completely():
    rows = {t: LOADERS[t](SHARED_DATA / STANDARD_FILES[t]) for t in TASKS}
    assert {t: len(r) for t, r in rows.items()} == {"boolq": 3270, "piqa": 1838, "hellaswag": 10042,
                                                    "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172,
                                                    "openbookqa": 500}
    # label balances stated in SOURCES.md
    assert sum(r["label"] for r in rows["boolq"]) == 2033
    gold = [r["label"] for r in rows["hellaswag"]]
    assert [gold.count(i) for i in range(4)] == [2515, 2485, 2584, 2458]
    assert all(len(r["choices"]) == 4 for r in rows["hellaswag"])
    assert {len(r["choices"]["text"]) for r in rows["arc_easy"]} == {3, 4, 5}
    assert any(r["choices"]["label"][0] == "1" for r in rows["arc_easy"])  # NY Regents items use digit labels
    assert all(r["answer"] in ("1", "2") and "_" in r["sentence"] for r in rows["winogrande"])
    assert all(r["label"] in (0, 1) for r in rows["piqa"])


@pytest.mark.parametrize("data", ["small_data", pytest.param("shared_head", marks=pytest.mark.shared_data)])
@pytest.mark.parametrize("task", TASKS)
def test_local_definition_builds_the_same_requests_as_lm_eval(task, data, request):
    """Our task config and lm-eval's own YAML (only the dataset swapped) give identical contexts, continuations and
    gold targets on the same rows: the fixtures and the first examples of the real files."""
    import lm_eval.tasks
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    rows = LOADERS[task](request.getfixturevalue(data) / STANDARD_FILES[task])
    ours = ConfigurableTask(config=task_config(task, rows, "test"))
    theirs_cfg = load_yaml(Path(lm_eval.tasks.__file__).parent / LM_EVAL_YAML[task], resolve_func=True)
    theirs_cfg.pop("process_docs", None)  # hellaswag: maps the raw HF fields to query/choices, which our rows hold
    theirs_cfg.update(custom_dataset=ours.config.custom_dataset, training_split=None)
    if "test_split" in task_config(task, rows, "test"):
        theirs_cfg["validation_split"] = None
    theirs = ConfigurableTask(config=theirs_cfg)
    built = []
    for t in (ours, theirs):
        t.build_all_requests(limit=None, rank=0, world_size=1)
        built.append(([i.arguments for i in t.instances], [t.doc_to_target(d) for d in t.eval_docs]))
    assert len(built[0][0]) >= 2 * N_SMALL
    assert built[0] == built[1]
    assert ours.config.metric_list == [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                                       for m in ("acc", "acc_norm") if m in str(theirs.config.metric_list)]


def test_hellaswag_preprocess_matches_lm_eval():
    from lm_eval.tasks.hellaswag.utils import preprocess

    from pipsteps.zeroshot_tasks import hellaswag_preprocess

    for s in (" How to cook [title] Stir the rice. [step] Add salt.  ", "Plain text.", "a [header] b [title]c"):
        assert hellaswag_preprocess(s) == preprocess(s)


def test_tiny_model_runs_all_seven_local_tasks(tiny_dir, small_data, tmp_path):
    out = tmp_path / "tasks.json"
    main(["--data-dir", str(small_data), "--limit", '{"hellaswag": 2}', "--batch-size", "4", "--threads", "2",
          "--model", str(tiny_dir), "--stage", "base", "--metrics", str(out)])
    res = json.loads(out.read_text())
    assert list(res["tasks"]) == list(TASKS) and res["num_fewshot"] == 0 and res["stage"] == "base"
    for task, r in res["tasks"].items():
        expected = {"acc"} if task in ("boolq", "winogrande") else {"acc", "acc_norm"}
        assert expected <= set(r) and "acc_norm" not in set(r) - expected, (task, r)
        assert all(0.0 <= r[m] <= 1.0 for m in expected)
        assert r["headline_metric"] == ("acc" if task in ("boolq", "winogrande") else "acc_norm")
        assert r["headline"] == r[r["headline_metric"]]
        assert r["n"] == (2 if task == "hellaswag" else N_SMALL) and r["n_total"] == N_SMALL
        assert r["source"] == f"local:{small_data / STANDARD_FILES[task]}"
        assert r["cpu_s"] > 0 and r["wall_s"] > 0
    avg = res["average"]
    assert avg["n_tasks"] == 7 and math.isclose(avg["value"], sum(r["headline"] for r in res["tasks"].values()) / 7)
    assert "acc_norm for hellaswag" in res["average_rule"]["text"]


def test_heterogeneous_width_pruned_model_scores_as_in_memory(small_data, tmp_path):
    """A model with different head and channel counts per layer goes through load_pruned into lm-eval and scores
    exactly as the pruned model in memory does."""
    from lm_eval.models.huggingface import HFLM

    from pipsteps.io import count_params
    from pipsteps.surgery import new_manifest, save_pruned
    from pipsteps.tiny import tiny_model, tiny_tokenizer
    from pipsteps.width import prune_width
    from pipsteps.zeroshot import build_tasks, evaluate_task

    model, manifest, tok = tiny_model("llama", seed=5), new_manifest(6), tiny_tokenizer()
    prune_width(model, manifest, {1: [0], 4: [1]}, {0: [0, 127], 1: list(range(0, 128, 3)), 3: list(range(64))},
                {0: [1, 3]})
    save_pruned(model, tok, tmp_path / "m", manifest)
    cfg = ZeroShotConfig(tasks=("piqa", "arc_easy", "hellaswag"), data_dir=str(small_data), batch_size=4, threads=2)
    res = zeroshot(cfg, tmp_path / "m")
    assert res["params_total"] == count_params(model)["total"] < count_params(tiny_model("llama"))["total"]
    lm = HFLM(pretrained=model.eval(), tokenizer=tok, batch_size=4)
    for name, task in build_tasks(cfg)[0].items():
        direct = evaluate_task(lm, task, None)["results"][name]
        assert res["tasks"][name]["acc"] == direct["acc,none"] and res["tasks"][name]["acc_norm"] == direct[
            "acc_norm,none"]
        assert 0 <= res["tasks"][name]["acc"] <= 1


@pytest.mark.slow
@pytest.mark.shared_data
def test_smollm2_beats_chance_on_piqa_and_arc_easy(smol):
    """The real embedded SmolLM2-135M on the first 50 PIQA and 50 ARC-Easy examples of the shared files."""
    files = {t: str(SHARED_DATA / STANDARD_FILES[t]) for t in ("piqa", "arc_easy")}
    res = zeroshot(ZeroShotConfig(tasks=("piqa", "arc_easy"), files=json.dumps(files), limit="50", threads=2),
                   smol[0] / "model")
    piqa, arc = res["tasks"]["piqa"], res["tasks"]["arc_easy"]
    assert piqa["n"] == 50 and arc["n"] == 50
    assert piqa["acc_norm"] > 0.55 and piqa["acc"] > 0.55  # chance: 0.5
    assert arc["acc_norm"] > 0.35 and arc["acc"] > 0.35  # chance: about 0.25 (mostly 4 choices)
    assert res["average"]["value"] == (piqa["acc_norm"] + arc["acc_norm"]) / 2


# ---------------------------------------------------------------- bad input: one line naming the task and field
def test_unknown_task_name_is_named_with_a_suggestion(tiny_dir, small_data):
    with pytest.raises(PipError, match=r"eval\.tasks\.names: unknown lm-eval task 'hellaswagg' \(did you mean "
                                       r"'hellaswag'\?\)"):
        zeroshot(ZeroShotConfig(tasks=("piqa", "hellaswagg"), data_dir=str(small_data)), tiny_dir)


@pytest.mark.parametrize("task,field,edit", [
    ("piqa", "sol2", lambda row: row.pop("sol2")),
    ("arc_easy", "question.stem", lambda row: row["question"].pop("stem")),
    ("boolq", "passage", lambda row: row.pop("passage")),
])
def test_missing_field_names_task_file_line_and_field(tiny_dir, small_data, tmp_path, task, field, edit):
    src = small_data / STANDARD_FILES[task]
    lines = src.read_text().splitlines()
    row = json.loads(lines[2])
    edit(row)
    lines[2] = json.dumps(row)
    bad = tmp_path / src.name
    bad.write_text("\n".join(lines) + "\n")
    if task == "piqa":
        (tmp_path / "valid-labels.lst").write_text(src.with_name("valid-labels.lst").read_text())
    with pytest.raises(PipError) as e:
        zeroshot(ZeroShotConfig(tasks=(task,), files=json.dumps({task: str(bad)})), tiny_dir)
    assert str(e.value) == f"eval.tasks: task {task}: {bad}:3: missing field '{field}'"


def test_bad_local_formats_are_one_line_errors(tiny_dir, small_data, tmp_path):
    bad = tmp_path / "hs.txt"
    bad.write_text("ctx\n7\na\nb\nc\nd\n")
    with pytest.raises(PipError, match=r"task hellaswag: .*hs\.txt:2: gold label must be 0-3, got '7'"):
        zeroshot(ZeroShotConfig(tasks=("hellaswag",), files=json.dumps({"hellaswag": str(bad)})), tiny_dir)
    (tmp_path / "valid.jsonl").write_text((small_data / "piqa/valid.jsonl").read_text())
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(PipError, match=r"task piqa: .*valid-labels\.lst has 2 labels for 5 examples"):
        zeroshot(ZeroShotConfig(tasks=("piqa",), files=json.dumps({"piqa": str(tmp_path / "valid.jsonl")})),
                 tiny_dir)


@pytest.mark.parametrize("limit,message", [
    ("0", "eval.tasks.limit: 0 is not a positive integer (examples of task boolq to evaluate; null = all)"),
    ('{"piqa": 0}', "eval.tasks.limit.piqa: 0 is not a positive integer (examples of task piqa to evaluate; "
                    "null = all)"),
    ('{"piqa": 0.5}', "eval.tasks.limit.piqa: 0.5 is not a positive integer"),
    ('{"mmlu": 5}', "eval.tasks.limit.mmlu: 'mmlu' is not one of the evaluated tasks"),
])
def test_bad_limits(limit, message):
    with pytest.raises(PipError) as e:
        parse_limits(limit, TASKS)
    assert str(e.value).startswith(message)


def test_cli_error_is_one_line(tiny_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipsteps.zeroshot", "--limit", "0", "--model", str(tiny_dir),
                           "--metrics", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == ["ERROR: eval.tasks.limit: 0 is not a positive integer (examples of task boolq to evaluate; "
                      "null = all)"]
    assert not (tmp_path / "t.json").exists()


# ---------------------------------------------------------------- the workflow rule
def snakemake(workdir: Path, cfg: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"),
           "--workflow-profile", str(REPO / "profiles" / "default"), *TEST_CORES, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def e2e_with_tasks(**tasks) -> dict:
    cfg = yaml.safe_load(E2E.read_text())
    cfg["eval"]["tasks"] = {"enabled": True, **tasks}
    return cfg


def test_workflow_adds_zero_shot_columns_to_the_summary(e2e_run, small_data, tmp_path):
    """Enabling eval.tasks on a finished tiny run adds only the evaluate_tasks jobs and a new summary."""
    work = tmp_path / "run"
    shutil.copytree(e2e_run, work, symlinks=True)  # keeps mtimes and .snakemake metadata: nothing else reruns
    cfg = e2e_with_tasks(data_dir=str(small_data), limit=2, batch_size=4)
    dry = snakemake(work, cfg, "-n", "results/summary.tsv")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout.split("Job stats:")[1].split("Reasons:")[0], re.M))
    assert jobs["evaluate_tasks"] == "3" and jobs["summarize"] == "1", dry.stdout[-3000:]
    assert not {"prepare_model", "collect_gradients", "prune_round", "evaluate_ppl"} & set(jobs), jobs
    proc = snakemake(work, cfg, "results/summary.tsv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((work / "results/base/eval/tasks.json").read_text())
    assert res["stage"] == "base" and set(res["tasks"]) == set(TASKS)
    assert all(r["n"] == 2 and 0 <= r["headline"] <= 1 for r in res["tasks"].values())
    assert "piqa" in (work / "logs/evaluate_tasks/base.log").read_text()
    assert (work / "benchmarks/evaluate_tasks/base.tsv").read_text().startswith("s\t")
    header, *rows = [line.split("\t") for line in (work / "results/summary.tsv").read_text().splitlines()]
    zs = [f"zs_{t}" for t in TASKS] + ["zs_avg"]
    assert set(zs) <= set(header) and [r[0] for r in rows] == ["dense", "depth/pip/r0.2", "depth/random/r0.2"]
    for row in rows:
        values = dict(zip(header, row))
        stage = "base" if values["stage"] == "dense" else values["stage"]
        tasks = json.loads((work / f"results/{stage}/eval/tasks.json").read_text())
        assert [float(values[c]) for c in zs] == [round(tasks["tasks"][t]["headline"], 4) for t in TASKS] + [
            round(tasks["average"]["value"], 4)]
    assert "acc_norm for hellaswag, arc_easy, arc_challenge, openbookqa, piqa, acc for boolq, winogrande" in (
        work / "results/summary.md").read_text()
    assert "Nothing to be done" in snakemake(work, cfg, "-n", "results/summary.tsv").stdout


# ---------------------------------------------------------------- bad config: fails when the workflow is parsed
@pytest.mark.parametrize("tasks,message", [
    ({"limit": 0}, "config: eval.tasks.limit: 0 is less than the minimum of 1"),
    ({"names": ["piqa", "hellaswagg"]},
     "eval.tasks.names: unknown lm-eval task 'hellaswagg' (did you mean 'hellaswag'?)"),
])
def test_bad_task_config_fails_at_parse_time(tmp_path, tasks, message):
    proc = snakemake(tmp_path, e2e_with_tasks(**tasks), "-n")
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "evaluate_tasks" not in proc.stdout  # nothing was scheduled


def test_missing_field_fails_at_parse_time(small_data, tmp_path):
    bad = tmp_path / "arc.jsonl"
    rows = [json.loads(line) for line in (small_data / STANDARD_FILES["arc_easy"]).read_text().splitlines()]
    del rows[1]["answerKey"]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = snakemake(tmp_path, e2e_with_tasks(data_dir=str(small_data), files={"arc_easy": str(bad)}), "-n")
    assert proc.returncode != 0
    assert f"eval.tasks: task arc_easy: {bad}:2: missing field 'answerKey'" in proc.stdout + proc.stderr


@pytest.mark.parametrize("tasks,message", [
    ({"limit": {"piqa": 0}}, "config: eval.tasks.limit.piqa: 0 is less than the minimum of 1"),
    ({"names": []}, "config: eval.tasks.names: [] should be non-empty"),
    ({"names": ["piqa", "piqa"]}, "config: eval.tasks.names: ['piqa', 'piqa'] has non-unique elements"),
    ({"files": {"squad": "/x.jsonl"}}, "config: unknown key eval.tasks.files.squad (allowed in eval.tasks.files: "
                                       "boolq, piqa, hellaswag"),
])
def test_schema_rejects_bad_task_blocks(tasks, message):
    with pytest.raises(ConfigError) as e:
        check_config(e2e_with_tasks(**tasks), REPO / "workflow/schemas/config.schema.yaml")
    assert str(e.value).startswith(message)


def test_parse_time_check_names_the_key(small_data, tmp_path):
    t = {"enabled": True, "names": ["piqa", "lambada_openai", "mmlu_anatomy"], "limit": {"piqa": 3}, "files": {},
         "data_dir": str(small_data), "batch_size": 8}
    check_tasks_config(t)  # hub tasks lm-eval knows pass; piqa is local
    bad = [({"names": ["arc-easy"], "limit": None}, "eval.tasks.names: unknown lm-eval task 'arc-easy' (did you mean "
                                                    "'arc_easy'?); local files exist only for boolq, piqa"),
           ({"names": ["no_such_task_xyz"], "limit": None}, "eval.tasks.names: unknown lm-eval task 'no_such_task_xyz';"),
           ({"names": ["piqa"], "limit": {"boolq": 5}}, "eval.tasks.limit.boolq: 'boolq' is not one of "
                                                        "eval.tasks.names (piqa)"),
           ({"files": {"piqa": str(tmp_path / "valid.jsonl")}},
            f"eval.tasks.files.piqa: piqa file not found: {tmp_path / 'valid.jsonl'}; eval.tasks.files.piqa: piqa "
            f"file not found: {tmp_path / 'valid-labels.lst'}"),
           ({"data_dir": str(tmp_path / "nope")}, f"eval.tasks.data_dir: directory not found: {tmp_path / 'nope'}")]
    for change, message in bad:
        with pytest.raises(PipError) as e:
            check_tasks_config(t | change)
        assert str(e.value).startswith(message), (change, str(e.value))
