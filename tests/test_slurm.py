"""The tiny e2e workflow through a real SLURM cluster on localhost, with the real SLURM profile.

tests/slurm/local_slurm.sh starts munged, slurmctld and slurmd (one node: 4 CPUs, 256 GiB, 2 fake GPUs
advertised). The workflow then runs with `--workflow-profile profiles/slurm` plus the overrides a cluster without
slurmdbd needs. Every job goes through sbatch; its outputs must equal a local run of the same config.

Needs SLURM and root (the `slurm` marker, tests/conftest.py): skipped without them, a failure under CI=true.
SLURM is installed by `tests/slurm/install_slurm.sh` (a step of .ci/run), never by the tests.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E = REPO / "tests" / "e2e" / "config.yaml"
HARNESS = REPO / "tests" / "slurm" / "local_slurm.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
# No slurmdbd on the test cluster: squeue for status (sacct would hang). The plugin checks after the init seconds,
# then every 10 s longer while nothing finished: a tiny job takes 6-10 s through sbatch (two snakemake start-ups and
# the step), so 12 s usually catches it at the first check; 8 s often just misses it and costs a 26 s hop.
# tests/slurm/local_slurm.sh sets MinJobAge=3600, well above 3x this.
TEST_CLUSTER_FLAGS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "12")
CORE_RULES = {"prepare_model", "prepare_calibration", "plan_rounds", "collect_gradients", "prune_round",
              "evaluate_ppl", "summarize"}
STAGES = ("base", "depth/pip/r0.2", "depth/random/r0.2")

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slurm


@dataclass(frozen=True)
class SlurmJob:
    job_id: int
    state: str
    comment: str  # the plugin sets rule_<name>
    workdir: str
    tres_per_job: str  # gres:gpu:1 for --gpus=1, N/A otherwise


def slurm_jobs() -> dict[int, SlurmJob]:
    """Every job slurmctld still remembers (finished ones stay for MinJobAge seconds)."""
    out = subprocess.run(["squeue", "--states=all", "--noheader",
                          "-O", "JobID:|,State:|,Comment:|,WorkDir:|,tres-per-job:|"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, state, comment, workdir, tres = line.split("|")[:5]
        jobs[int(job_id)] = SlurmJob(int(job_id), state, comment, workdir, tres)
    return jobs


def cancel_jobs_in(workdir: Path) -> None:
    """scancel whatever a (killed or failed) run in workdir left queued or running."""
    live = [str(j.job_id) for j in slurm_jobs().values()
            if j.workdir == str(workdir) and j.state in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
    if live:
        subprocess.run(["scancel", *live], check=False, timeout=60)


def snakemake_cmd(workdir: Path, profile: Path, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--workflow-profile", str(profile), *args]
    log.info("running %s", " ".join(cmd))
    return cmd


def run_snakemake(workdir: Path, profile: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(snakemake_cmd(workdir, profile, *args), capture_output=True, text=True, cwd=workdir,
                              timeout=timeout)
    finally:
        if profile == SLURM_PROFILE:
            cancel_jobs_in(workdir)


def rule_declarations() -> tuple[set[str], set[str]]:
    """(rules declaring a `gpu` resource, rules declaring `localrule: True`), read from workflow/rules/*.smk."""
    gpu, local, current, parents = set(), set(), None, {}
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if m := re.match(r"\s*(?:rule|checkpoint) (\w+):", line):
                current = m.group(1)
            elif m := re.match(r"\s*use rule (\w+) as (\w+) with:", line):  # inherits the parent's resources
                current, parents[m.group(2)] = m.group(2), m.group(1)
            elif re.fullmatch(r"\s*gpu=[1-9]\d*,?", line):
                gpu.add(current)
            elif line.strip() == "localrule: True":
                local.add(current)
    gpu |= {child for child, parent in parents.items() if parent in gpu}
    local |= {child for child, parent in parents.items() if parent in local}
    return gpu, local


def check_ok(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    start = subprocess.run(["bash", str(HARNESS), "start"], capture_output=True, text=True, timeout=300)
    try:
        assert start.returncode == 0, f"local SLURM did not start:\n{start.stdout}\n{start.stderr}"
        yield
    finally:  # also after a failed start: stop whatever daemons did come up
        if shutil.which("scancel"):
            subprocess.run(["scancel", "--user", getpass.getuser()], check=False, timeout=60)
        stop = subprocess.run(["bash", str(HARNESS), "stop"], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr


@pytest.fixture(scope="module")
def runs(e2e_run, slurm_cluster, tmp_path_factory) -> tuple[Path, Path, str]:
    """(SLURM run, local run, SLURM run's output) of the e2e config. The local reference is the session's complete
    tiny e2e run (tests/conftest.py: the same config through the default profile with TEST_CORES, the command a local
    run here would use), read only; a second local run beside the SLURM one would only compete for the CPUs."""
    slurm_dir = tmp_path_factory.mktemp("slurm")
    shutil.copy(E2E, slurm_dir / "config.yaml")
    assert (e2e_run / "config.yaml").read_text() == E2E.read_text()
    out = tmp_path_factory.mktemp("slurm-out") / "snakemake.out"
    t0 = time.monotonic()
    with out.open("w") as fh:
        slurm = subprocess.Popen(snakemake_cmd(slurm_dir, SLURM_PROFILE, *TEST_CLUSTER_FLAGS,
                                               "--slurm-keep-successful-logs"),
                                 stdout=fh, stderr=subprocess.STDOUT, cwd=slurm_dir)
    try:
        rc = slurm.wait(timeout=1800)
    finally:
        if slurm.poll() is None:  # SIGINT: snakemake scancels its jobs (SIGTERM would wait for them)
            slurm.send_signal(signal.SIGINT)
            try:
                slurm.wait(timeout=60)
            except subprocess.TimeoutExpired:
                slurm.kill()
        cancel_jobs_in(slurm_dir)
    log.info("SLURM run took %.0f s", time.monotonic() - t0)
    assert rc == 0, f"SLURM run failed:\n{out.read_text()[-8000:]}"
    return slurm_dir, e2e_run, out.read_text()


@pytest.fixture(scope="module")
def slurm_run(runs) -> Path:
    return runs[0]


@pytest.fixture(scope="module")
def local_run(runs) -> Path:
    return runs[1]


def slurm_log_ids(workdir: Path) -> dict[str, list[int]]:
    """rule -> SLURM job ids, from .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<jobid>.log."""
    ids: dict[str, list[int]] = {}
    for rule_dir in (workdir / ".snakemake/slurm_logs").glob("rule_*"):
        ids[rule_dir.name.removeprefix("rule_")] = sorted(int(p.stem) for p in rule_dir.rglob("*.log"))
    return ids


def jobs_per_rule(workdir: Path) -> Counter:
    """Jobs a run executed per rule: every rule writes one benchmark file per job."""
    return Counter(p.relative_to(workdir / "benchmarks").parts[0] for p in (workdir / "benchmarks").rglob("*.tsv"))


def test_every_job_went_through_sbatch(runs):
    slurm_run, local_run, output = runs
    gpu_rules, local_rules = rule_declarations()
    assert {"collect_gradients", "evaluate_ppl"} <= gpu_rules and "track_mlflow" in local_rules
    ids = slurm_log_ids(slurm_run)
    expected = jobs_per_rule(local_run)
    assert jobs_per_rule(slurm_run) == expected
    assert CORE_RULES | {"track_mlflow"} <= set(expected)
    # local rules (round plans, final-model links, MLflow import) ran on the submit host; every other job was an
    # sbatch job with its own log
    ran_locally = set(re.findall(r"^local(?:rule|checkpoint) (\w+):$", output, re.M)) - {"all"}
    assert "plan_rounds" in ran_locally
    assert ran_locally == local_rules & set(expected), ran_locally
    assert {rule: len(v) for rule, v in ids.items()} == {r: n for r, n in expected.items() if r not in local_rules}
    all_ids = [i for v in ids.values() for i in v]
    assert len(set(all_ids)) == len(all_ids), ids
    known = slurm_jobs()
    for rule, job_ids in ids.items():
        for job_id in job_ids:
            job = known.get(job_id)  # finished jobs stay in slurmctld's memory for MinJobAge=3600 s (longer than a run)
            assert job is not None, f"SLURM job {job_id} ({rule}) unknown to squeue"
            assert (job.state, job.workdir) == ("COMPLETED", str(slurm_run)), job
            assert job.comment == f"rule_{rule}" or job.comment.startswith(f"rule_{rule}_wildcards_"), job
            # the job's own log: the jobstep executor ran the rule inside the allocation
            text = next((slurm_run / ".snakemake/slurm_logs" / f"rule_{rule}").rglob(f"{job_id}.log")).read_text()
            assert "--executor slurm-jobstep" in text and f"(Rule: {rule})" in text, text[-2000:]
            # the profile's `gpu: 1` reached SLURM (--gpus=1) for the GPU rules only; a prune round asks for a GPU
            # when it runs the model: rounds r >= 2 of PIP take their own gradients, random reads nothing
            gpu = rule in gpu_rules
            if rule == "prune_round":
                wc = dict(re.findall(r"\b(method|round)=([\w.-]+)", text))
                gpu = int(wc["round"]) > 1 and wc["method"] == "pip"
            assert job.tres_per_job == ("gres:gpu:1" if gpu else "N/A"), (job, text[-1500:])


def without_scores(manifest: dict) -> dict:
    return {**manifest, "rounds": [{**r, "scores": None} for r in manifest["rounds"]]}


def test_outputs_equal_the_local_run(slurm_run, local_run):
    """Same removed layers, manifests and weights; scores and PPL equal to 1e-6 (same CPU; only the thread
    scheduling of the two runs differs, so the floats are in practice bit-identical)."""
    for method in ("pip", "random"):
        variant = f"results/depth/{method}/r0.2"
        plan = json.loads((slurm_run / variant / "plan.json").read_text())
        assert plan == json.loads((local_run / variant / "plan.json").read_text())
        final = f"{variant}/model"
        slurm_manifest, local_manifest = (json.loads((run / final / "pruning_manifest.json").read_text())
                                          for run in (slurm_run, local_run))
        assert len(slurm_manifest["removed_layers"]) == 2
        assert without_scores(slurm_manifest) == without_scores(local_manifest)
        for slurm_round, local_round in zip(slurm_manifest["rounds"], local_manifest["rounds"]):
            assert slurm_round["scores"] == (pytest.approx(local_round["scores"], rel=1e-6)
                                             if local_round["scores"] else None)
        weights = [hashlib.sha256((run / final / "model.safetensors").read_bytes()).hexdigest()
                   for run in (slurm_run, local_run)]
        assert weights[0] == weights[1], f"{method}: pruned weights differ"
        for r in range(1, plan["rounds"] + 1):
            slurm_round, local_round = (json.loads((run / variant / f"round_{r}/round.json").read_text())
                                        for run in (slurm_run, local_run))
            assert slurm_round["removed"] == local_round["removed"], f"{method} round {r}"
            scores = [[x["score"] for x in rnd["layer_scores"]] for rnd in (slurm_round, local_round)]
            assert scores[0] == (pytest.approx(scores[1], rel=1e-6) if method == "pip" else scores[1]), (method, r)
    for stage in STAGES:
        slurm_m, local_m = (json.loads((run / "results" / stage / "eval/metrics.json").read_text())
                            for run in (slurm_run, local_run))
        assert slurm_m["params_total"] == local_m["params_total"], stage
        for name, by_len in local_m["ppl"].items():
            assert slurm_m["ppl"][name] == pytest.approx(by_len, rel=1e-6), stage


def test_slurm_run_is_complete_for_a_second_run(slurm_run):
    proc = run_snakemake(slurm_run, SLURM_PROFILE, *TEST_CLUSTER_FLAGS, "-n", timeout=300)
    check_ok(proc, "dry run")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize("resource,slurm_message", [
    ("mem_mb=10000000", "Memory specification can not be satisfied"),
    ("cpus_per_task=64", "More processors requested than permitted"),
    ("gpu=8", "Requested node configuration is not available"),
])
def test_request_larger_than_the_partition_fails_fast(slurm_cluster, tmp_path, resource, slurm_message):
    shutil.copy(E2E, tmp_path / "config.yaml")
    t0 = time.monotonic()
    # prepare_model is the first job: its sbatch call is the one that must be rejected
    proc = run_snakemake(tmp_path, SLURM_PROFILE, *TEST_CLUSTER_FLAGS, "--set-resources",
                         f"prepare_model:{resource}", timeout=180)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "SLURM sbatch failed" in out and slurm_message in out, out[-3000:]
    assert elapsed < 90, f"took {elapsed:.0f} s to fail"
    assert not (tmp_path / "results/base/model.json").exists()
    live = [j for j in slurm_jobs().values() if j.workdir == str(tmp_path) and j.state in ("PENDING", "RUNNING")]
    assert not live, live
