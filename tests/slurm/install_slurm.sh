#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs for its one-node SLURM cluster on localhost: Debian/Ubuntu's slurmctld,
# slurmd, slurm-client and munge (apt, as root). A step of .ci/run; pytest never installs anything.
#
#   sudo bash tests/slurm/install_slurm.sh
#
# Does nothing when every binary is already there. Installs packages only: no daemon is started and no config is
# written (tests/slurm/local_slurm.sh starts the cluster for the tests and stops it afterwards).
# Without root or apt-get it says so and exits 1; outside CI the SLURM tests then skip with the reason.
set -euo pipefail

BINARIES=(munged mungekey slurmctld slurmd sbatch squeue sinfo scancel scontrol)
PACKAGES=(slurmctld slurmd slurm-client munge)

missing() {
  local b
  for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || echo "$b"; done
}

say() { echo "[install_slurm] $*" >&2; }

if [[ -z "$(missing)" ]]; then
  say "SLURM is installed: $(slurmctld -V)"
  exit 0
fi
[[ $EUID -eq 0 ]] || { say "missing: $(missing | xargs); run as root to install ${PACKAGES[*]}"; exit 1; }
command -v apt-get >/dev/null || { say "missing: $(missing | xargs); no apt-get: install SLURM by hand"; exit 1; }

say "installing ${PACKAGES[*]} (apt)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
if [[ -n "$(missing)" ]]; then
  say "still missing after apt-get install: $(missing | xargs)"
  exit 1
fi
say "installed: $(slurmctld -V)"
