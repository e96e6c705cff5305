#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost for tests/test_slurm.py: munged + slurmctld + slurmd,
# started directly (no systemd, no cgroups, no accounting database). Debian 12 (slurm 22.05), as root.
#
#   bash tests/slurm/local_slurm.sh start    # (re)write the config, start, wait for 'idle'
#   bash tests/slurm/local_slurm.sh stop     # stop the daemons this script started (by their pid files)
#   bash tests/slurm/local_slurm.sh status
# It installs nothing: tests/slurm/install_slurm.sh does (a step of .ci/run). Exit status 3: SLURM is not installed.
#
# Knobs: PIPSTEPS_SLURM_DIR (state, logs, pid files, munge key; default /tmp/pipsteps-slurm),
# PIPSTEPS_SLURM_CPUS (default 4), PIPSTEPS_SLURM_MEM_MB (default 262144), PIPSTEPS_SLURM_GPUS (default 2).
# The node advertises these numbers whatever the hardware is (SlurmdParameters=config_overrides), so the
# profile's 64 GB / 2-CPU / 1-GPU requests fit on a small CI box. Nothing enforces them (no cgroups).
# The GPUs are fake: character devices cloned from /dev/null. SLURM schedules `--gpus=1` onto them and sets
# CUDA_VISIBLE_DEVICES; torch (CPU build) still computes on the CPU.
set -euo pipefail

D="${PIPSTEPS_SLURM_DIR:-/tmp/pipsteps-slurm}"
CPUS="${PIPSTEPS_SLURM_CPUS:-4}"
MEM="${PIPSTEPS_SLURM_MEM_MB:-262144}"
GPUS="${PIPSTEPS_SLURM_GPUS:-2}"
# slurm.conf must be at the compiled-in path: the jobstep plugin strips SLURM_CONF before its inner srun.
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# written by pipsteps tests/slurm/local_slurm.sh"
SOCK="$D/munge/munge.socket.2"

say() { echo "[local_slurm] $*" >&2; }

pid_of() {  # running, non-zombie pid recorded in $D/run/NAME.pid, or failure
  local p
  p="$(cat "$D/run/$1.pid" 2>/dev/null)" || return 1
  [[ -n "$p" && "$(cat "/proc/$p/comm" 2>/dev/null)" == "$1" ]] || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null || return 1
  echo "$p"
}

stop_one() {
  local p
  p="$(pid_of "$1")" || return 0
  say "stopping $1 (pid $p)"
  kill "$p" 2>/dev/null || true
  for _ in $(seq 60); do pid_of "$1" >/dev/null || return 0; sleep 0.25; done
  say "$1 (pid $p) is still running after 15 s"
  return 1
}

remove_conf() {  # only configs this script wrote: with a slurm.conf but no slurmctld, `scontrol show config`
  local f       # waits 9 s, and the snakemake SLURM plugin runs it at every start, even for local runs
  for f in "$CONF" "$GRES_CONF"; do
    if [[ -e "$f" ]] && grep -qF "$MARK" "$f"; then rm -f "$f"; fi
  done
}

stop_all() { stop_one slurmd; stop_one slurmctld; stop_one munged; remove_conf; }

write_conf() {  # the config for the current knobs, on stdout
  local gres_types="" node_gres=""
  if ((GPUS > 0)); then gres_types="GresTypes=gpu"; node_gres=" Gres=gpu:$GPUS"; fi
  cat <<EOF
$MARK (state in $D)
ClusterName=pipsteps-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# sbatch rejects requests larger than the partition at once instead of leaving them PENDING forever
EnforcePartLimits=ALL
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# no slurmdbd, so snakemake polls with squeue: finished jobs must stay visible (>= 3x the init seconds), and
# tests/test_slurm.py checks every job of a run with squeue at the end: an hour covers a slow (busy) machine
MinJobAge=3600
$gres_types
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM$node_gres State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  [[ $EUID -eq 0 ]] || { say "must run as root"; exit 1; }
  local b
  for b in munged mungekey slurmctld slurmd sbatch sinfo; do
    command -v "$b" >/dev/null || { say "$b not found: install SLURM with tests/slurm/install_slurm.sh"; exit 3; }
  done
  if [[ -e "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF was not written by this script; refusing to replace a real SLURM config"
    exit 1
  fi
  for n in slurmctld slurmd; do  # detection only: a foreign daemon holds the ports we need
    mine="$(pid_of "$n" || true)"
    for f in /proc/[0-9]*/comm; do
      [[ "$(cat "$f" 2>/dev/null)" == "$n" ]] || continue
      p="${f#/proc/}" && p="${p%/comm}"
      grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null && continue
      [[ "$p" == "$mine" ]] || { say "a $n not started by this script runs (pid $p)"; exit 1; }
    done
  done

  mkdir -p "$D"/{run,log,state/ctld,state/d,munge,dev} /etc/slurm
  chmod 755 "$D" "$D/munge"
  [[ -s "$D/munge/munge.key" ]] || mungekey --create --keyfile="$D/munge/munge.key"
  chmod 600 "$D/munge/munge.key"  # root-owned key: munged refuses Debian's munge-owned one when run as root

  local new
  new="$(mktemp)"
  write_conf >"$new"
  if ! cmp -s "$new" "$CONF"; then
    stop_one slurmd
    stop_one slurmctld
    install -m 644 "$new" "$CONF"
    say "wrote $CONF"
  fi
  rm -f "$new"
  if ((GPUS > 0)); then
    for ((g = 0; g < GPUS; g++)); do
      [[ -e "$D/dev/gpu$g" ]] || mknod "$D/dev/gpu$g" c 1 3 2>/dev/null || touch "$D/dev/gpu$g"
    done
    echo "$MARK
NodeName=localhost Name=gpu File=$D/dev/gpu[0-$((GPUS - 1))]" >"$GRES_CONF"
  else
    echo "$MARK (no GRES)" >"$GRES_CONF"
  fi

  if ! pid_of munged >/dev/null; then
    munged --socket="$SOCK" --key-file="$D/munge/munge.key" --pid-file="$D/run/munged.pid" \
      --log-file="$D/log/munged.log" --seed-file="$D/munge/munged.seed" </dev/null >/dev/null 2>&1
  fi
  for _ in $(seq 40); do [[ -S "$SOCK" ]] && break; sleep 0.25; done
  munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null
  # -c: forget the jobs of an earlier session (a killed test run may have left some queued)
  pid_of slurmctld >/dev/null || slurmctld -c </dev/null >>"$D/log/slurmctld.out" 2>&1
  pid_of slurmd >/dev/null || slurmd -c -N localhost </dev/null >>"$D/log/slurmd.out" 2>&1

  local state=""
  for _ in $(seq 120); do
    state="$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)"
    case "$state" in
      idle | mixed | allocated | completing) say "ready: node localhost is $state"; return 0 ;;
      down* | drain* | fail*) scontrol update nodename=localhost state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  say "node localhost did not become idle (state '$state'); logs are in $D/log"
  exit 1
}

status() {
  for n in munged slurmctld slurmd; do
    if p="$(pid_of "$n")"; then echo "$n pid=$p"; else echo "$n not running"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-start}" in
  start) start ;;
  stop) stop_all ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
