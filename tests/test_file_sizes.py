"""No file over 400 lines: code, tests, rules, configs, schemas and docs alike.

The files are the repository's tracked text files (``git ls-files``), so a results folder or a
virtual environment never counts; data tables (csv), lock files and images are not prose or code
and are left out.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
TEXT_SUFFIXES = {".py", ".md", ".rst", ".yaml", ".yml", ".smk", ".sh", ".toml", ".cfg", ".txt"}
TEXT_NAMES = {"Snakefile", "Makefile", "run"}


def tracked_text_files(repo: Path) -> list[Path]:
    """The tracked files of ``repo`` that are code or prose (module docstring)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"{repo} is not a git checkout: {error}")
    paths = [repo / name for name in listed.split("\0") if name]
    return [p for p in paths if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in TEXT_NAMES)]


def long_files(files: list[Path], root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """``{path: lines}`` of the files over ``limit`` lines."""
    return {
        str(p.relative_to(root)): n
        for p in files
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
    }


def test_long_files_counts_lines(tmp_path):
    (tmp_path / "short.md").write_text("a\n" * 400)
    (tmp_path / "long.yaml").write_text("a\n" * 401)
    files = sorted(tmp_path.iterdir())
    assert long_files(files, tmp_path) == {"long.yaml": 401}


def test_the_file_list_covers_every_kind_of_source():
    names = {str(p.relative_to(REPO)) for p in tracked_text_files(REPO)}
    for expected in ("Snakefile", "config.yaml", "README.md", "rules/detection.smk", ".ci/run"):
        assert expected in names


def test_no_file_over_400_lines():
    long = long_files(tracked_text_files(REPO), REPO)
    assert long == {}, f"files over {MAX_LINES} lines: {long}"
