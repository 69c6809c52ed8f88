"""Errors of bad input and bad settings: reported as one clear line, without a traceback.

Anything else that escapes a stage is a bug and keeps its traceback (in the rule's log too).
"""

from __future__ import annotations


class LungsegError(Exception):
    """Bad input or settings; the message names the file or key and what is wrong."""


class SettingsError(LungsegError, ValueError):
    """A setting is unknown, missing, of the wrong type or inconsistent with another."""


class InputError(LungsegError):
    """An input file or folder is missing, unreadable or corrupt."""


class DataError(InputError, ValueError):
    """One input item (a series, a volume, a checkpoint) is unusable: corrupt, truncated, or its
    making failed upstream; the message names it and how to rebuild it."""


class OutputError(LungsegError, OSError):
    """An output cannot be written (no space left on device, no permission); names the path."""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that a stage needs is absent; the message says how to rebuild it."""
