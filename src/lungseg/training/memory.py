"""Process memory: peak usage and the CPU allocator setting that lets freed activations go.

glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), so
after the first training step most activation-sized blocks land on the heap, and freed heap
memory stays in the process: peak RSS then counts memory no tensor uses any more. Fixing the
threshold keeps every block above it on its own mapping, returned to the system on free.
Measured on a 64^3 iUNet training step (C=16, 4 levels): the resident peak above the model
drops from about 20 to about 9 full-resolution activations; see docs/benchmark.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

import torch

#: mallopt parameter number of M_MMAP_THRESHOLD in glibc's malloc.h
M_MMAP_THRESHOLD = -3
#: blocks from this size up get their own mapping (a 64^3 float32 channel is 1 MiB)
MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_memory_to_os(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold so freed large tensors leave the process; False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):  # musl and others: nothing to tune
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """Largest resident set size of this process (since the last :func:`reset_peak_rss`).

    Read from VmHWM, not getrusage: ``ru_maxrss`` also counts the parent's RSS at fork time
    (the kernel carries the pre-exec image's peak over), so a child of a big process would
    report the parent's size as its own peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0, /proc/self/clear_refs); False if unsupported.

    Without it the CPU peak of a small step is often an earlier one (imports, model building).
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory on ``device``: CUDA max allocated, else the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()
