#!/usr/bin/env bash
# Install a local single-node SLURM (Debian/Ubuntu packages: Slurm 22.05 on Debian 12) for the
# cluster integration test (tests/test_slurm.py). Idempotent: does nothing when the daemons and
# clients are already there. Needs root (or sudo) and apt-get; installs nothing else and starts
# no daemon (the test starts and stops its own).
set -euo pipefail

needed=(slurmctld slurmd sbatch squeue munged)
missing=0
for tool in "${needed[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing=1
done
if [ "$missing" = 0 ]; then
    echo "install-slurm: slurmctld, slurmd, slurm-client and munge already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-slurm: apt-get not found; install slurmctld slurmd slurm-client munge by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
echo "install-slurm: installed slurmctld $(dpkg-query -W -f '${Version}' slurmctld)"
