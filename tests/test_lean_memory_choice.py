"""``lean_memory`` (auto, true, false): the lean backward only where its internals are vouched
for; elsewhere memcnn's stock backward, chosen by itself with one warning, never silently."""

from __future__ import annotations

import logging

import pytest

from lungseg.nets import versions
from lungseg.nets.models import build_model
from lungseg.nets.versions import VOUCHED, installed_versions, lean_memory_enabled

OTHER_TORCH = {**VOUCHED, "torch": "2.11.0"}


@pytest.mark.parametrize(
    ("setting", "installed", "enabled", "warns"),
    [
        ("auto", VOUCHED, True, None),
        ("auto", OTHER_TORCH, False, "using memcnn's stock backward"),
        ("auto", {**VOUCHED, "memcnn": "1.6.0"}, False, "memcnn 1.6.0 (tested: 1.5.2)"),
        (True, OTHER_TORCH, True, "lean_memory true with torch 2.11.0"),
        (True, VOUCHED, True, None),
        (False, VOUCHED, False, None),
        ("false", OTHER_TORCH, False, None),
    ],
)
def test_the_choice(setting, installed, enabled, warns, caplog):
    versions._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="lungseg.nets.versions"):
        assert lean_memory_enabled(setting, installed) is enabled
    if warns:
        assert warns in caplog.text
    else:
        assert caplog.text == ""


def test_this_install_is_vouched_for():
    """CI installs the lock: the lean path must be what runs there."""
    assert installed_versions() == VOUCHED


def test_an_unvouched_install_builds_the_stock_iunet_and_says_so(monkeypatch, caplog):
    versions._warn_once.cache_clear()
    monkeypatch.setattr(versions, "installed_versions", lambda: OTHER_TORCH)
    settings = {"arch": "iunet", "channels": 4, "levels": 2, "lean_memory": "auto"}
    with caplog.at_level(logging.WARNING, logger="lungseg.nets.versions"):
        model = build_model(settings)
        build_model(settings)
    wrappers = {type(m).__name__ for m in model.core.modules() if hasattr(m, "keep_input")}
    assert wrappers == {"InvertibleModuleWrapper"}  # memcnn's own
    assert caplog.text.count("using memcnn's stock backward") == 1  # once a process
    monkeypatch.undo()
    lean = build_model(settings)
    wrappers = {type(m).__name__ for m in lean.core.modules() if hasattr(m, "keep_input")}
    assert wrappers == {"LeanInvertibleWrapper"}


def test_a_bad_value_is_named():
    with pytest.raises(ValueError, match="lean_memory must be auto, true or false"):
        lean_memory_enabled("yes", VOUCHED)
