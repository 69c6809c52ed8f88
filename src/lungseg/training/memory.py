"""Process memory: current and peak resident memory, CUDA's peak on GPUs.

The benchmark's allocator setting (freed activations returned to the system) is made in the
environment of its child processes: :mod:`lungseg.bench.allocator`.
"""

from __future__ import annotations

import resource

import torch


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
