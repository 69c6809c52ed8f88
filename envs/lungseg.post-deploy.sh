#!/usr/bin/env bash
# Runs inside the freshly created conda env (Snakemake calls it after creating envs/lungseg.yaml).
# Installs the same pinned packages as the Makefile's venv, then lungseg from this checkout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/install-lock.sh" python  # --no-deps; builds pyradiomics-bhklab
python -m pip install --no-deps --no-build-isolation "$repo"
