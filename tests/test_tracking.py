"""MLflow tracking for real: the default sqlite store, a real `mlflow server` on 127.0.0.1, an unreachable server
with a later `sync`, no duplicate runs for cached steps, and a new child run for a rerun step."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import snakemake
from pipsteps.tracking import parent_of, records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], "tags.`pip.kind` = 'job'", max_results=1000))


def assert_runs_match_records(client: MlflowClient, experiment: str, results: Path) -> None:
    exp = client.get_experiment_by_name(experiment)
    parents = {r.data.tags["pip.parent"]: r for r in
               client.search_runs([exp.experiment_id], "tags.`pip.kind` = 'parent'")}
    assert set(parents) == {"dense", "depth/pip/r0.2", "depth/random/r0.2"}
    children = {r.data.tags["pip.record"]: r for r in child_runs(client, experiment)}
    recs = records(results)
    assert set(children) == {str(p.relative_to(results)) for p in recs}
    for path in recs:
        rel = path.relative_to(results)
        run, record = children[str(rel)], json.loads(path.read_text())
        assert run.data.tags["mlflow.parentRunId"] == parents[parent_of(rel)].info.run_id
        for key, value in record.get("config", {}).items():
            assert run.data.params[key] == str(value), (rel, key)
    ev = json.loads((results / "depth/pip/r0.2/eval/metrics.json").read_text())
    run = children["depth/pip/r0.2/eval/metrics.json"]
    assert run.data.metrics["ppl/heldout/16"] == ev["ppl"]["heldout"]["16"]
    assert run.data.metrics["params_total"] == ev["params_total"]
    rnd = json.loads((results / "depth/pip/r0.2/round_1/round.json").read_text())
    history = client.get_metric_history(children["depth/pip/r0.2/round_1/round.json"].info.run_id, "layer_scores/score")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [s["score"] for s in rnd["layer_scores"]]
    assert children["depth/pip/r0.2/round_1/round.json"].data.metrics["achieved_ratio"] == rnd["achieved_ratio"]
    manifests = client.list_artifacts(parents["depth/pip/r0.2"].info.run_id)
    assert {"pruning_manifest.json", "summary.tsv", "summary.md"} <= {a.path for a in manifests}


@pytest.fixture
def workdir(e2e_run, tmp_path) -> Path:
    """A copy of the finished tiny run (results + Snakemake metadata), so tracking tests may rerun parts of it."""
    d = tmp_path / "run"
    shutil.copytree(e2e_run, d, ignore=shutil.ignore_patterns("mlflow.db", "mlruns", "mlartifacts"))
    return d


def set_mlflow(workdir: Path, **values) -> Path:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    cfg.setdefault("mlflow", {}).update(values)
    path = workdir / "tracked.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_default_sqlite_store_holds_the_run(e2e_run):
    status = json.loads((e2e_run / "results/mlflow/tracking.json").read_text())
    assert status["status"] == "imported" and status["tracking_uri"] == "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{e2e_run / 'mlflow.db'}")
    assert_runs_match_records(client, "tiny-e2e", e2e_run / "results")


def test_rerun_adds_no_duplicates_and_a_changed_step_gets_a_new_child(workdir):
    config = set_mlflow(workdir)
    snakemake(workdir, "--forcerun", "track_mlflow", config=config)  # creates the store in the copy
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    n = len(child_runs(client, "tiny-e2e"))
    snakemake(workdir, "--forcerun", "track_mlflow", config=config)
    assert len(child_runs(client, "tiny-e2e")) == n  # cached steps are not imported twice
    cfg = yaml.safe_load(config.read_text())
    cfg["eval"]["max_tokens"] = 256
    config.write_text(yaml.safe_dump(cfg))
    snakemake(workdir, config=config)  # reruns the 3 evaluations, the summary and the import
    runs = child_runs(client, "tiny-e2e")
    assert len(runs) == n + 3  # one new child run per rerun evaluation; the older ones stay as history
    evals = [r for r in runs if r.data.tags["pip.record"] == "base/eval/metrics.json"]
    assert sorted(r.data.params["max_tokens"] for r in evals) == ["256", "512"]


def test_unreachable_server_then_sync_to_a_real_server(workdir, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    config = set_mlflow(workdir, tracking_uri=uri)
    snakemake(workdir, config=config)  # server down: the workflow still succeeds
    status = json.loads((workdir / "results/mlflow/tracking.json").read_text())
    assert status["status"] == "pending" and status["tracking_uri"] == uri
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(1)
        proc = subprocess.run([sys.executable, "-m", "pipsteps.tracking", "sync", "--results", "results",
                               "--tracking-uri", uri, "--experiment", "tiny-e2e"], cwd=workdir,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads((workdir / "results/mlflow/tracking.json").read_text())["status"] == "imported"
        client = MlflowClient(tracking_uri=uri)
        assert_runs_match_records(client, "tiny-e2e", workdir / "results")
        n = len(child_runs(client, "tiny-e2e"))
        snakemake(workdir, "--forcerun", "track_mlflow", config=config)  # server up: imports nothing new
        assert len(child_runs(client, "tiny-e2e")) == n
    finally:
        server.terminate()
        server.wait(timeout=30)
