"""Process memory measurements the benchmark and training rely on (Linux, real allocations)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lungseg.bench.allocator import FREED_MEMORY_TO_OS, child_environment
from lungseg.training.memory import (
    current_rss_bytes,
    peak_memory_bytes,
    peak_rss_bytes,
    reset_peak_rss,
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


#: Allocates 50 blocks of 4 MiB, frees them; prints MiB held before and after the free.
_FREE_BLOCKS = """
import numpy as np
from lungseg.training.memory import current_rss_bytes
MIB = 1 << 20
np.ones(16 * MIB, dtype=np.uint8)  # freed at once: glibc raises its mmap threshold to 16 MiB
start = current_rss_bytes()
blocks, pins = [], []
for _ in range(50):
    blocks.append(np.ones(4 * MIB, dtype=np.uint8))
    pins.append(bytearray(200_000))  # so that the freed blocks are not the top of the heap
held = current_rss_bytes() - start
del blocks
print(held // MIB, (current_rss_bytes() - start) // MIB)
"""


@pytest.mark.parametrize(
    ("allocator", "mib_after_free"), [("fixed", range(0, 20)), ("default", range(150, 1000))]
)
def test_freed_large_blocks_leave_the_process(allocator, mib_after_free):
    """With the benchmark's GLIBC_TUNABLES freed blocks leave at once; glibc's default keeps them.

    In a fresh process each: the setting is process-wide (read at start-up), and this process's
    history (other tests' frees) would blur its RSS.
    """
    tunables = FREED_MEMORY_TO_OS if allocator == "fixed" else None
    env = child_environment(
        tunables, {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    )
    child = subprocess.run(
        [sys.executable, "-c", _FREE_BLOCKS], capture_output=True, text=True, check=True, env=env
    )
    held, after = map(int, child.stdout.split())
    assert held >= 190, held
    assert after in mib_after_free, after


def test_a_child_does_not_report_its_parents_peak():
    # This process holds 1 GiB more when it starts the child; the child itself (python + torch,
    # ~220 MiB) stays far below that.
    ballast = np.ones(1024 * MIB, dtype=np.uint8)
    code = "from lungseg.training.memory import peak_rss_bytes; print(peak_rss_bytes())"
    child_peak = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert child_peak < 600 * MIB, child_peak / MIB
    del ballast


def test_child_environment_appends_to_existing_tunables():
    env = child_environment("glibc.malloc.mmap_threshold=1048576", {"GLIBC_TUNABLES": "a=1"})
    assert env["GLIBC_TUNABLES"] == "a=1:glibc.malloc.mmap_threshold=1048576"
    assert "GLIBC_TUNABLES" not in child_environment(None, {})
