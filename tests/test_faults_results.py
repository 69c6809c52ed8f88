"""Faults in results (issue 16): a corrupt volume, crops file or checkpoint is named with how to
rebuild it; a full disk says so and keeps the earlier result.

Each case damages a real file made for the test and checks that nothing earlier was deleted.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fault_helpers import truncate as _truncate

from lungseg.core.atomic import write_csv_atomic, write_text_atomic
from lungseg.core.errors import InputError, OutputError
from lungseg.io.hdf5 import read_volume, write_volume

# --- corrupt results: named, with how to rebuild them -------------------------------------------


def _volume(path: Path) -> Path:
    image = np.full((4, 32, 32), -1000, np.int16)
    write_volume(path, image, np.zeros(image.shape, np.uint8), {"series_uid": "1.2.3"})
    return path


def _read_crops(path: Path):
    from lungseg.training.data import read_crops

    return read_crops(path, 1)


def _read_source_volume(path: Path):
    from lungseg.dataset.crops import SourceVolume

    return SourceVolume.open(path, "1.2.3")


def _read_checkpoint(path: Path):
    from lungseg.training.trainer import read_checkpoint

    return read_checkpoint(path)


CORRUPT_CASES = {
    "truncated volume": (_volume, _truncate, read_volume, "snakemake --force"),
    "truncated volume, read by crops": (_volume, _truncate, _read_source_volume, "--force"),
    "garbage volume": (
        _volume,
        lambda p: p.write_bytes(b"\0" * 4096) and p,
        read_volume,
        "--force",
    ),
    "truncated crops file": (_volume, _truncate, _read_crops, "snakemake crops"),
    "garbage checkpoint": (
        lambda p: p.write_bytes(b"PK\x03\x04" + b"x" * 500) and p,
        lambda p: p,
        _read_checkpoint,
        "snakemake train_all",
    ),
}


@pytest.mark.parametrize(("write", "damage", "read", "rebuild"), CORRUPT_CASES.values(),
                         ids=CORRUPT_CASES.keys())  # fmt: skip
def test_corrupt_results_are_named_with_how_to_rebuild_them(tmp_path, write, damage, read, rebuild):
    path = tmp_path / "file.h5"
    write(path)
    damage(path)
    with pytest.raises(InputError) as caught:
        read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and rebuild in message
    assert "please file an issue" not in message and "\n" not in message
    assert path.exists()  # reading never deletes


def test_a_garbage_last_checkpoint_means_starting_afresh(tmp_path, caplog):
    from lungseg.training.trainer import resumable

    last = tmp_path / "last.pt"
    last.write_bytes(b"PK\x03\x04 not a checkpoint")
    with caplog.at_level(logging.WARNING):
        assert resumable(last, {}, "") is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{last} is not a readable checkpoint (truncated or corrupt): starting afresh"]


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a 256 KB tmpfs (root may mount one), else one whose writes fail with ENOSPC."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    ).returncode == 0  # fmt: skip
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def _save_checkpoint(path: Path) -> None:
    import torch

    from lungseg.training.trainer import save_checkpoint

    save_checkpoint({"weights": torch.zeros(200_000)}, path)


FULL_CASES = {
    "table": lambda p: write_csv_atomic(p, pd.DataFrame({"a": np.arange(100_000)})),
    "volume": lambda p: write_volume(
        p,
        np.arange(2 * 256 * 256, dtype=np.int16).reshape(2, 256, 256),
        np.zeros((2, 256, 256), np.uint8),
        {},
        compression="none",
    ),  # fmt: skip
    "checkpoint": _save_checkpoint,
}


@pytest.mark.parametrize("write", FULL_CASES.values(), ids=FULL_CASES.keys())
def test_a_full_disk_says_so_and_keeps_the_earlier_result(full_disk, write):
    path = full_disk / "result"
    write_text_atomic(path, "earlier result")
    with pytest.raises(OutputError) as caught:
        write(path)
    message = str(caught.value)
    assert message.startswith(f"no space left on device while writing {path}")
    assert "unexpected pos" not in message
    assert path.read_text() == "earlier result"
    assert sorted(p.name for p in full_disk.iterdir()) == ["result"]  # no temporary left
