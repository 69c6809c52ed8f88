"""Atomic outputs: all or nothing, no temporary files left, ordinary permissions."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from lungseg.core.atomic import atomic_path, write_csv_atomic, write_text_atomic


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, umask, expected):
    previous = os.umask(umask)
    try:
        write_csv_atomic(tmp_path / "table.csv", pd.DataFrame({"a": [1, 2]}))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == expected
    assert pd.read_csv(tmp_path / "table.csv")["a"].tolist() == [1, 2]
