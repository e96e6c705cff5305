"""Step: import the workflow's step records into MLflow (and the `sync` command for runs that could not be sent).

Jobs never talk to MLflow. Every step writes a JSON record under `results/` (its resolved config + metrics), and
this importer, a local rule on the submit host, turns them into MLflow runs at the end of the workflow:

- one experiment per config `experiment`;
- one parent run per pipeline variant (`dense` for the shared steps: model, calibration, dense gradients, dense
  evaluation; `unit/method/rRATIO` for each pruned variant, recovery included);
- one nested child run per job record: params = the step's resolved config, metrics = every numeric value, lists
  of numbers (per-layer scores and gradient norms) as metric steps, and the model manifest, summary table and
  plots as artifacts.

A child run is keyed by the record's path and the SHA-256 of its content, so a cached step is never imported twice
and a rerun step shows up as a new child run with its own params. A single writer means parallel jobs (local or
on SLURM nodes) can never lock or corrupt the store. If the tracking server is unreachable (connection refused or
reset, unknown host, timeout), the importer records `pending`, the workflow still succeeds, and
`python -m pipsteps.tracking sync` imports everything later. Any other failure (a store that cannot be opened, a
rejected request, an unreadable record) fails the import with one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from pipsteps import cli
from pipsteps import layout as L
from pipsteps.errors import PipError
from pipsteps.files import write_json

log = logging.getLogger("pipsteps.tracking")
SKIP = ("mlflow",)  # result folders that are not step records


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}{k}/")
    else:
        yield prefix.rstrip("/"), obj


def parent_of(rel: Path) -> str:
    """`dense` for shared steps, else the variant `unit/method/rRATIO` the record belongs to."""
    parts = rel.parts
    return "dense" if parts[0] in (L.DENSE, "calibration") else "/".join(parts[:3])


def job_name(rel: Path) -> str:
    """A readable child-run name from the record path, e.g. `round_2/prune`, `grads_clean`, `eval/metrics`."""
    parts = list(rel.with_suffix("").parts)
    parts = parts[3:] if parts[0] not in (L.DENSE, "calibration") else parts
    return "/".join(parts) or rel.stem


def records(results: Path) -> list[Path]:
    """Step records: JSON files under results/, except model directories, checkpoints and hidden files."""
    def is_record(rel: Path) -> bool:
        folders = rel.parts[:-1]
        return (rel.parts[0] not in SKIP and not {"model", "checkpoint"} & set(folders)
                and not any(part.startswith(".") for part in rel.parts))

    return sorted(p for p in results.rglob("*.json") if is_record(p.relative_to(results)))


def to_mlflow(record: dict[str, Any]) -> tuple[dict[str, str], dict[str, float], dict[str, list[float]]]:
    """(params, scalar metrics, per-step metrics) of one step record."""
    params = {k: str(v)[:6000] for k, v in flatten(record.get("config", {}))}
    scalars: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    for k, v in flatten({k: v for k, v in record.items() if k != "config"}):
        if isinstance(v, bool):
            scalars[k] = float(v)
        elif isinstance(v, (int, float)):
            scalars[k] = float(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            steps[k] = [float(x) for x in v]
        elif isinstance(v, list) and v and all(isinstance(x, dict) and "score" in x for x in v):
            steps[f"{k}/score"] = [float(x["score"]) for x in v if x.get("score") is not None]
    return params, scalars, steps


def artifacts_for(results: Path, parent: str) -> list[Path]:
    files = [results / "summary.tsv", results / "summary.md", *sorted((results / "plots").glob("*.png"))]
    if parent != "dense":  # the variant's final model's manifest
        files.append(results / L.model(parent) / "pruning_manifest.json")
    return [f for f in files if f.exists()]


def import_records(results: Path, tracking_uri: str, experiment: str) -> dict[str, Any]:
    """Create the missing parent/child runs; returns what was imported."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    loaded = []  # every record is read before anything is sent: an unreadable one fails the import up front
    for path in records(results):
        raw = path.read_bytes()
        try:
            loaded.append((path, raw, json.loads(raw)))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PipError(f"step record {path} is not valid JSON ({e}): rerun the step that wrote it") from None
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    parents: dict[str, str] = {}
    created, skipped = [], 0
    for path, raw, record in loaded:
        rel = path.relative_to(results)
        digest = hashlib.sha256(raw).hexdigest()
        parent = parent_of(rel)
        if parent not in parents:
            found = client.search_runs([exp_id], f"tags.`pip.parent` = '{parent}' and tags.`pip.kind` = 'parent'")
            parents[parent] = found[0].info.run_id if found else client.create_run(
                exp_id, run_name=parent, tags={"pip.parent": parent, "pip.kind": "parent"}).info.run_id
        query = f"tags.`pip.record` = '{rel}' and tags.`pip.sha256` = '{digest}'"
        if client.search_runs([exp_id], query):
            skipped += 1
            continue
        params, scalars, steps = to_mlflow(record)
        run = client.create_run(exp_id, run_name=job_name(rel), tags={
            "mlflow.parentRunId": parents[parent], "pip.record": str(rel), "pip.sha256": digest, "pip.kind": "job"})
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in scalars.items()]
        metrics += [Metric(k, v, now, i) for k, vs in steps.items() for i, v in enumerate(vs)]
        for i in range(0, max(len(metrics), 1), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000],
                             params=[Param(k, v) for k, v in params.items()] if i == 0 else [])
        client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id)
        created.append({"record": str(rel), "run_id": run.info.run_id, "parent": parent})
    for parent, run_id in parents.items():
        for f in artifacts_for(results, parent):
            client.log_artifact(run_id, str(f))
        client.set_terminated(run_id)
    log.info("MLflow %s, experiment %r: %d child runs created, %d already present, %d parents", tracking_uri,
             experiment, len(created), skipped, len(parents))
    return {"status": "imported", "tracking_uri": tracking_uri, "experiment": experiment, "experiment_id": exp_id,
            "parents": parents, "created": created, "already_present": skipped}


def unreachable(e: BaseException) -> bool:
    """Whether `e` (or an exception it was raised from) says the tracking server cannot be reached: connection
    refused or reset, unknown host, timeout. A TLS certificate error is a setup fault, not an outage."""
    import requests

    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, requests.exceptions.SSLError):
            return False
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                              TimeoutError, socket.gaierror)):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def run(results: Path, tracking_uri: str, experiment: str, strict: bool = False) -> dict[str, Any]:
    """Import, or (not `strict`) record `pending` when the server is unreachable; any other failure is a PipError."""
    # fail fast instead of retrying for minutes when a server is unreachable (compute nodes often have no route)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        return import_records(results, tracking_uri, experiment)
    except PipError:
        raise
    except Exception as e:
        if strict or not unreachable(e):
            log.info("MLflow import failed:", exc_info=True)  # the traceback, in the job log
            raise PipError(f"MLflow import into {tracking_uri} failed: {type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:300]}") from e
        log.warning("MLflow tracking at %s failed (%s: %s); metrics stay in %s. Import them later with: python -m "
                    "pipsteps.tracking sync --results %s --tracking-uri %s --experiment %s", tracking_uri,
                    type(e).__name__, str(e).splitlines()[0][:300], results, results, tracking_uri, experiment)
        return {"status": "pending", "tracking_uri": tracking_uri, "experiment": experiment,
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Import step records into MLflow (`sync` retries pending imports).")
    p.add_argument("command", nargs="?", choices=["import", "sync"], default="import")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--out", type=Path, default=None, help="status JSON (default: RESULTS/mlflow/tracking.json)")
    ns = p.parse_args(argv)
    status = run(ns.results, ns.tracking_uri, ns.experiment, strict=ns.command == "sync")
    write_json(ns.out or ns.results / "mlflow" / "tracking.json", status)


if __name__ == "__main__":
    cli.main_wrapper(main)
