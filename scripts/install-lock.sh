#!/usr/bin/env bash
# Install requirements.lock exactly, without dependency resolution (--no-deps: memcnn and iunets
# must not pull torchvision and SimpleITK's wheels they do not need), into the running python.
#   [LUNGSEG_TORCH=auto|cpu|cuda] scripts/install-lock.sh PYTHON [pip options...]
#
# torch is not in requirements.lock: scripts/install-torch.sh installs its CPU or CUDA build with
# that build's own pinned dependencies (requirements-torch-*.lock), between the two steps below.
#
# pyradiomics-bhklab is published as an sdist only: its setup.py compiles two C extensions
# against numpy and imports versioneer. Build isolation would fetch the newest setuptools,
# numpy and versioneer at build time, unpinned; so it is built in a second step, without
# isolation, against the pinned numpy, setuptools and versioneer the first step installed.
set -euo pipefail
python="$1"
shift
lock="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/requirements.lock"
built_from_source='^pyradiomics-bhklab=='
"$python" -m pip install "$@" --no-deps -r <(grep -v "$built_from_source" "$lock")
"$(dirname "${BASH_SOURCE[0]}")/install-torch.sh" "$python" "$@"
"$python" -m pip install "$@" --no-deps --no-build-isolation "$(grep "$built_from_source" "$lock")"
