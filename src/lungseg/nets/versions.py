"""Which library versions lungseg's lean-memory code is vouched for, and the choice it makes.

The lean backward (:mod:`lungseg.nets.invertible`, :mod:`lungseg.nets.lean_layers`,
:mod:`lungseg.nets.pages`) relies on private internals of torch, memcnn and iunets
(docs/lean_memory.md). ``tests/test_pinned_internals.py`` checks them for the versions below;
with any other installed version, ``lean_memory: auto`` falls back to memcnn's stock backward
(more memory, the same gradients) and says so once, at start-up, instead of risking wrong
gradients.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from importlib import metadata

log = logging.getLogger(__name__)

#: the versions the pinned-internals and gradient tests vouch for (requirements*.lock)
VOUCHED = {"torch": "2.13.0", "memcnn": "1.5.2", "iunets": "0.1"}


def installed_versions() -> dict[str, str]:
    """The installed version of each package of :data:`VOUCHED` (torch without its local
    build tag such as ``+cpu``)."""
    found = {}
    for name in VOUCHED:
        try:
            found[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def unvouched(installed: Mapping[str, str]) -> list[str]:
    """``package version`` of every installed package whose version is not the vouched one."""
    return [
        f"{name} {installed.get(name)} (tested: {version})"
        for name, version in VOUCHED.items()
        if installed.get(name) != version
    ]


@functools.cache
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def lean_memory_enabled(setting: str | bool, installed: Mapping[str, str] | None = None) -> bool:
    """Whether the lean backward is used for the ``lean_memory`` setting (auto, true, false)."""
    if setting is False or setting == "false":
        return False
    if setting not in (True, "true", "auto"):
        raise ValueError(f"lean_memory must be auto, true or false, got {setting!r}")
    others = unvouched(installed_versions() if installed is None else installed)
    if not others:
        return True
    if setting == "auto":
        _warn_once(
            "lean_memory auto: " + ", ".join(others) + ": not the versions lungseg's lean "
            "backward is tested with; using memcnn's stock backward instead (same gradients, "
            "about 4x the step memory; docs/lean_memory.md). Set lean_memory: true to force it."
        )
        return False
    _warn_once(
        "lean_memory true with " + ", ".join(others) + ": the lean backward relies on internals "
        "tested only with "
        + ", ".join(f"{k} {v}" for k, v in VOUCHED.items())
        + "; check tests/test_pinned_internals.py and the gradient tests on this install"
    )
    return True
