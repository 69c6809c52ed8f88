"""glibc malloc settings of the benchmarks' child processes, set through ``GLIBC_TUNABLES``.

glibc reads its tunables from the environment once, when a process starts, so a setting made
here reaches exactly the child it is given to: the parent (and pytest) keep their allocator.
On other C libraries the variable is ignored and the child runs with the default allocator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Blocks of 1 MiB and more get their own mapping and leave the process when freed. glibc's
#: default raises its mmap threshold every time a large block is freed (up to 32 MiB), so after
#: a few frees activation-sized blocks land on the heap and stay in the process: peak RSS then
#: counts memory no tensor uses any more. Setting the threshold also fixes it (no raising).
#: A 64^3 float32 channel is 1 MiB. Measured effect: docs/benchmark.md.
FREED_MEMORY_TO_OS = "glibc.malloc.mmap_threshold=1048576"

#: Freed buffers stay in the heap for the next allocation (the ingestion benchmark's reference:
#: pydicom at its fastest and steadiest, no fresh pages faulted in per file).
KEEP_FREED_BUFFERS = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


def child_environment(tunables: str | None, base: Mapping[str, str] | None = None) -> dict:
    """``base`` (default: this process's environment) with ``tunables`` added to GLIBC_TUNABLES.

    ``None`` leaves the allocator as ``base`` has it. Settings already in ``base`` come first,
    so for a tunable named twice the one given here wins (glibc applies them in order).
    """
    env = dict(os.environ if base is None else base)
    if tunables:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), tunables]))
    return env
