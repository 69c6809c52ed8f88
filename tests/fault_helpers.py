"""Damage shared by the fault tests (test_faults, test_faults_results).

- ``truncate(path, keep=0.5)``: cut a file to ``keep`` of its bytes, as a half-written one.
"""

from __future__ import annotations

from pathlib import Path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
