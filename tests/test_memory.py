"""Process memory measurements the benchmark and training rely on (Linux, real allocations)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch

from lungseg.memory import (
    current_rss_bytes,
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    return_freed_memory_to_os,
)

MIB = 1 << 20


def _touch(n_bytes: int) -> None:
    block = np.ones(n_bytes, dtype=np.uint8)  # ones, not empty: the pages must become resident
    del block


def test_reset_peak_rss_starts_a_new_window():
    _touch(300 * MIB)
    assert peak_rss_bytes() >= current_rss_bytes() + 250 * MIB
    assert reset_peak_rss()
    assert peak_rss_bytes() < current_rss_bytes() + 50 * MIB  # the 300 MiB peak is forgotten
    _touch(100 * MIB)
    peak = peak_memory_bytes(torch.device("cpu"))
    assert current_rss_bytes() + 80 * MIB <= peak < current_rss_bytes() + 250 * MIB


def test_freed_large_blocks_leave_the_process():
    assert return_freed_memory_to_os()
    start = current_rss_bytes()
    blocks = [np.ones(4 * MIB, dtype=np.uint8) for _ in range(50)]
    assert current_rss_bytes() >= start + 150 * MIB
    del blocks
    assert current_rss_bytes() < start + 20 * MIB


def test_a_child_does_not_report_its_parents_peak():
    # This process holds 1 GiB more when it starts the child; the child itself (python + torch,
    # ~220 MiB) stays far below that.
    ballast = np.ones(1024 * MIB, dtype=np.uint8)
    code = "from lungseg.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child_peak = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert child_peak < 600 * MIB, child_peak / MIB
    del ballast
