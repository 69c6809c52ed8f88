"""The output folder of ``lungseg predict``: checked writable before any work, stale staging
folders of killed runs removed.

A series is written into ``.<series_uid>.partial-<pid>/`` next to its final folder and moved
into place when complete (the previous result is moved aside to ``.<series_uid>.old-<pid>/``
for that moment). A run killed by SIGKILL, the out-of-memory killer or a power cut leaves its
staging folder behind: partial NIfTI files, hundreds of MB for a thin-slice scan. At its start a
run removes such folders when they cannot belong to a running prediction:

- the process ``<pid>`` is not running (or is a zombie): its run is over;
- ``<pid>`` runs, but started after the folder was last changed (more than
  :data:`CLOCK_SLACK_S` before): the pid was reused by a later process.

A folder of a prediction that is still running on this machine is never touched. The check sees
this machine's processes only: two machines predicting into one shared folder at the same time
could remove each other's staging folders (the workflow's jobs, one per series, only look at
their own series' folders).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from lungseg.core.errors import OutputError

logger = logging.getLogger(__name__)

#: ``.<name>.partial-<pid>`` (being written) or ``.<name>.old-<pid>`` (a replaced result)
STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>[0-9]+)$")
#: a live process's folder is changed after the process started; this much clock imprecision
#: (process start times are known to ~10 ms, file systems round mtimes) is allowed for
CLOCK_SLACK_S = 2.0


def staging_name(name: str, kind: str = "partial", pid: int | None = None) -> str:
    """The hidden folder in which ``name`` is written (``partial``) or set aside (``old``)."""
    return f".{name}.{kind}-{os.getpid() if pid is None else pid}"


def _reason(error: OSError) -> str:
    where = f": {error.filename}" if error.filename else ""
    return f"{error.strerror or error}{where}"


def ensure_writable(folder: str | os.PathLike[str], option: str = "--out") -> bool:
    """Create ``folder`` if missing and write a probe file in it; True if it was created.

    A real write, not :func:`os.access` (which reads permission bits: root passes them, and on
    a network file system the server decides): fails with an :class:`OutputError` naming the
    folder and the reason. A disk that fills up later still fails later, naming the file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder}: a file, not a folder")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = _reason(error)
        blocking = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
        if isinstance(error, NotADirectoryError) and blocking is not None:
            reason = f"{blocking} is a file"
        raise OutputError(f"{option} {folder}: cannot create the folder ({reason})") from error
    try:
        handle, probe = tempfile.mkstemp(prefix=".lungseg-write-probe-", dir=folder)
        try:
            os.write(handle, b"lungseg predict write probe\n")
            os.fsync(handle)
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)  # the probe's own name says nothing
        raise OutputError(f"{option} {folder}: not writable ({reason})") from error
    return created


def remove_if_empty(folder: str | os.PathLike[str]) -> None:
    """Undo :func:`ensure_writable`'s folder when a run stops before writing anything."""
    with contextlib.suppress(OSError):  # not empty, or gone: leave it
        Path(folder).rmdir()


def process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), None if no such process runs here."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # someone else's process: alive, start unknown
        return float("-inf")


def stale_reason(pid: int, changed: float, started: float | None) -> str | None:
    """Why the staging folder of ``pid`` last changed at ``changed`` is stale; None: keep it.

    ``started``: when the process now holding ``pid`` started (:func:`process_start`), None if
    none runs.
    """
    if started is None:
        return f"pid {pid} is not running"
    if changed < started - CLOCK_SLACK_S:
        return f"pid {pid} is a later process, started after the folder was last written"
    return None


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@dataclass(frozen=True)
class Removed:
    path: Path
    bytes: int
    reason: str


def remove_stale_staging(folder: str | os.PathLike[str], name: str | None = None) -> list[Removed]:
    """Remove the stale staging folders (module doc) directly under ``folder``; log each.

    ``name``: only those of this result (a workflow job, whose siblings may run elsewhere).
    A folder that cannot be removed is logged and left; the run goes on.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError as error:
        raise OutputError(f"{folder}: cannot list the folder ({_reason(error)})") from error
    for entry in entries:
        match = STAGING.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            changed = entry.stat(follow_symlinks=False).st_mtime
        except OSError:  # gone meanwhile
            continue
        pid = int(match["pid"])
        reason = stale_reason(pid, changed, process_start(pid))
        if reason is None:
            logger.info("%s: kept, the staging folder of running pid %d", entry.path, pid)
            continue
        size = folder_bytes(entry.path)
        try:
            shutil.rmtree(entry.path)
        except OSError as error:
            logger.warning("%s: stale staging folder not removed (%s)", entry.path, _reason(error))
            continue
        logger.warning(
            "removed stale staging folder %s (%.1f MB; %s)", entry.path, size / 2**20, reason
        )
        removed.append(Removed(Path(entry.path), size, reason))
    return removed


def prepare_out(folder: str | os.PathLike[str], option: str = "--out") -> bool:
    """:func:`ensure_writable`, then :func:`remove_stale_staging`; True if it was created."""
    created = ensure_writable(folder, option)
    remove_stale_staging(folder)
    return created
