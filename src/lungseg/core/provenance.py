"""Source hashes of stage subpackages: a rule param, so editing a stage's code reruns its jobs.

Snakemake's code trigger sees only the workflow script; the logic lives in the package. Each
rule names the subpackages its job runs (its own stage and the ones it calls); the hash covers
their ``.py`` files, so an edit reruns that stage and what depends on it, nothing else. ``core``
(logging, atomic writes, settings plumbing) is left out: it shapes how results are written, not
what they are.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def source_hash(*subpackages: str) -> str:
    """SHA-256 (16 hex digits) of the sources of ``lungseg.<subpackage>`` for each name given."""
    digest = hashlib.sha256()
    for name in sorted(set(subpackages)):
        folder = PACKAGE / name
        files = sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]
        if not files or not files[0].exists():
            raise ValueError(f"no lungseg subpackage {name!r} under {PACKAGE}")
        for path in files:
            digest.update(path.relative_to(PACKAGE).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
