#!/usr/bin/env bash
# Install torch 2.13.0 into PYTHON, the CPU or the CUDA build, with every package that build needs
# pinned (requirements-torch-cpu.lock / requirements-torch-cuda.lock) and installed --no-deps.
#   LUNGSEG_TORCH=auto|cpu|cuda scripts/install-torch.sh PYTHON [pip options...]
#
# auto (default): cuda when `nvidia-smi -L` lists a GPU whose driver runs CUDA 13 (>= 580),
#   else cpu.
# cpu:  the CPU wheel (~190 MB, needs only packages of requirements.lock). A wheel that pip's own
#   configuration already provides (a local wheelhouse, find-links) is used without the network;
#   otherwise the PyTorch CPU index ($LUNGSEG_TORCH_CPU_INDEX) serves it.
# cuda: PyPI's torch 2.13.0, built for CUDA 13, and its 18 CUDA packages (~3 GB). It also runs on
#   a machine without a GPU.
# Extra pip options pass through (the tests use --dry-run --report FILE --isolated).
set -euo pipefail
python="$1"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cpu_index="${LUNGSEG_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
choice="${LUNGSEG_TORCH:-auto}"

say() { echo "install-torch: $*" >&2; }

cuda_driver_ok() {
  # The GPU count and the driver's major version; CUDA 13 needs driver 580 or newer.
  command -v nvidia-smi >/dev/null || return 1
  local gpus driver
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ') || return 1
  [ "$gpus" -ge 1 ] || return 1
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
  if [ "${driver%%.*}" -lt 580 ] 2>/dev/null; then
    say "a GPU is present, but its driver $driver is older than CUDA 13 needs (580):" \
      "installing the CPU build (docs: README 'Install details')"
    return 1
  fi
  return 0
}

case "$choice" in
  auto) if cuda_driver_ok; then choice=cuda; else choice=cpu; fi ;;
  cpu | cuda) ;;
  *)
    say "LUNGSEG_TORCH=$choice: expected auto, cpu or cuda"
    exit 2
    ;;
esac
say "torch build: $choice (LUNGSEG_TORCH=${LUNGSEG_TORCH:-auto})"
lock="$repo/requirements-torch-$choice.lock"

if [ "$choice" = cuda ]; then
  "$python" -m pip install "$@" --no-deps -r "$lock"
else
  # Offline first: quiet and fast where pip's configuration already has the wheel.
  if ! "$python" -m pip install "$@" --no-deps --no-index -r "$lock" 2>/dev/null; then
    "$python" -m pip install "$@" --no-deps --index-url "$cpu_index" -r "$lock"
  fi
fi
