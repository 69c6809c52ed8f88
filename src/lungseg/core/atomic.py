"""Atomic file output: write to a temporary sibling, then rename into place.

A crash or a killed job leaves either the old file or no file, never a half-written one. A
full disk is reported as such, with the path (:class:`lungseg.core.errors.OutputError`), whatever
library was writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lungseg.core.errors import OutputError

#: errno values that mean the file system is full
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        _raise_if_full(error, target)
        raise
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        tmp.chmod(0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        _raise_if_full(error, target)
        raise


class _RecordingWriter:
    """A binary file whose write errors are kept: libraries (torch) wrap them in their own."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def write_through_file(path: str | os.PathLike[str], save: Callable[[Any], None]) -> None:
    """Write ``path`` atomically by ``save(file)`` (e.g. ``torch.save(state, file)``).

    A write error the library wraps (torch: ``unexpected pos``) is raised as the OSError it
    was, so a full disk reads "no space left on device while writing PATH".
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        writer = _RecordingWriter(file)
        try:
            save(writer)
        except Exception as error:
            if writer.error is not None:
                raise writer.error from error
            raise


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the file system is full.

    Libraries wrap the OSError (h5py's message, torch's ``unexpected pos``); the cause chain
    and the message are looked at too.
    """
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _raise_if_full(error: BaseException, target: Path) -> None:
    if isinstance(error, OutputError) or not disk_full(error):
        return
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MB free"
    except OSError:
        free = "free space unknown"
    full = OutputError(
        f"no space left on device while writing {target} ({free} in {target.parent}); "
        "free some space and rerun (earlier results are intact)"
    )
    raise full from error


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | os.PathLike[str], frame) -> None:  # frame: pandas.DataFrame
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
