"""HDF5 volume files: round trip per codec, region reads, label dtypes, atomic writes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import lungseg
from lungseg.core.errors import InputError
from lungseg.io.hdf5 import COMPRESSIONS, read_attrs, read_volume, write_volume

ATTRS = {
    "patient_id": "LIDC-IDRI-0001",
    "series_uid": "1.2.3.4",
    "spacing": (2.5, 0.7, 0.7),
    "origin": (-340.0, -180.5, -200.0),
    "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "slice_thickness": 2.5,
    "n_source_files": 40,
    "software_versions": {"pydicom": "3.0.2", "lungseg": "0.1.0"},
}


def _volume(shape=(20, 40, 30), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1024, 2000, size=shape, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:9, 10:20, 3:8] = 1
    mask[12:14, 30:35, 20:25] = 2
    return image, mask


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_is_lossless_for_every_codec(tmp_path, compression):
    image, mask = _volume()
    path = tmp_path / f"{compression}.h5"
    write_volume(path, image, mask, ATTRS, compression=compression)
    got_image, got_mask, attrs = read_volume(path)
    np.testing.assert_array_equal(got_image, image)
    np.testing.assert_array_equal(got_mask, mask)
    assert got_image.dtype == np.int16 and got_mask.dtype == np.uint8
    assert attrs["spacing"] == (2.5, 0.7, 0.7)
    assert attrs["direction"] == ATTRS["direction"]
    assert attrs["software_versions"] == ATTRS["software_versions"]
    assert attrs["n_source_files"] == 40 and attrs["patient_id"] == "LIDC-IDRI-0001"
    assert attrs["compression"] == compression
    with h5py.File(path) as f:
        assert f["image"].chunks is not None
        assert f["image"].attrs["units"] == "HU"


def test_compression_actually_shrinks_a_smooth_volume(tmp_path):
    z, y, x = np.mgrid[0:32, 0:128, 0:128]
    image = ((z + y + x) % 50 - 1000).astype(np.int16)
    mask = np.zeros_like(image, dtype=np.uint8)
    write_volume(tmp_path / "raw.h5", image, mask, {}, compression="none")
    write_volume(tmp_path / "zstd.h5", image, mask, {}, compression="blosc-zstd")
    assert (tmp_path / "zstd.h5").stat().st_size < (tmp_path / "raw.h5").stat().st_size / 4


def test_region_read_returns_the_box(tmp_path):
    image, mask = _volume()
    path = tmp_path / "v.h5"
    write_volume(path, image, mask, ATTRS)
    box = np.s_[4:10, 8:22, 2:9]
    got_image, got_mask, _ = read_volume(path, region=box)
    np.testing.assert_array_equal(got_image, image[box])
    np.testing.assert_array_equal(got_mask, mask[box])
    assert read_attrs(path)["series_uid"] == "1.2.3.4"


def test_background_chunks_of_the_mask_are_never_written(tmp_path):
    """Only chunk slabs holding labels are stored; the rest read back as the fill value 0."""
    image = np.zeros((40, 256, 256), dtype=np.int16)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[17:19, 130:140, 10:20] = 3  # one chunk (16, 128, 64) holds it
    mask[39, 0, 255] = 1  # the last, partial slab, far corner
    path = tmp_path / "v.h5"
    write_volume(path, image, mask, {})
    _, got_mask, _ = read_volume(path)
    np.testing.assert_array_equal(got_mask, mask)
    with h5py.File(path) as f:
        assert f["mask"].fillvalue == 0
        assert f["mask"].id.get_num_chunks() == 2
        assert f["image"].id.get_num_chunks() == 3 * 2 * 4


def test_many_labels_are_stored_as_uint16(tmp_path):
    image, _ = _volume(shape=(4, 20, 80))
    mask = np.arange(image.size, dtype=np.int64).reshape(image.shape) % 300
    write_volume(tmp_path / "v.h5", image, mask, {})
    _, got_mask, _ = read_volume(tmp_path / "v.h5")
    assert got_mask.dtype == np.uint16
    np.testing.assert_array_equal(got_mask, mask)


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((4, 4), np.int16), np.zeros((4, 4), np.uint8), "3-D"),
        (np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.uint8), "int16"),
        (np.zeros((2, 4, 4), np.int16), np.zeros((2, 4, 5), np.uint8), "mask shape"),
        (np.zeros((2, 4, 4), np.int16), np.full((2, 4, 4), -1, np.int32), "0..65535"),
    ],
)
def test_bad_arrays_are_rejected_with_reason(tmp_path, image, mask, message):
    with pytest.raises(ValueError, match=message):
        write_volume(tmp_path / "v.h5", image, mask, {})
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    image, mask = _volume()
    path = tmp_path / "v.h5"
    write_volume(path, image, mask, ATTRS)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_volume(path, image, mask, {"bad": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.h5"]


def test_unknown_codec_and_missing_file_name_the_problem(tmp_path):
    image, mask = _volume()
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        write_volume(tmp_path / "v.h5", image, mask, {}, compression="zip")
    with pytest.raises(InputError, match="nothere.h5: file not found; rebuild it"):
        read_volume(tmp_path / "nothere.h5")


def _modules_that_use_h5py() -> list[str]:
    package = Path(lungseg.__file__).parent
    return sorted(
        "lungseg." + ".".join(path.relative_to(package).with_suffix("").parts)
        for path in package.rglob("*.py")
        if re.search(r"^import h5py", path.read_text(), flags=re.MULTILINE)
    )


def test_modules_that_use_h5py_are_found():
    assert "lungseg.io.hdf5" in _modules_that_use_h5py()


@pytest.mark.parametrize("compression", ["blosc-lz4", "blosc-zstd"])
@pytest.mark.parametrize("module", _modules_that_use_h5py())
def test_every_module_that_reads_hdf5_can_decode_the_default_codecs(tmp_path, module, compression):
    # A fresh interpreter: in this process some other module has registered the filters already.
    path = tmp_path / "blosc.h5"
    write_volume(path, *_volume(), ATTRS, compression=compression)
    code = (
        f"import {module}, h5py, sys\n"
        f"with h5py.File(sys.argv[1], 'r') as file:\n"
        f"    file['image'][...]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{module} cannot read Blosc-compressed HDF5:\n{result.stderr}"
