"""`lungseg predict` end to end on real DICOM: outputs read back by independent readers, bad input.

The networks are small untrained ones (tests/predict_helpers.py); what is checked is what the
command promises whatever the weights: every output of a series, consistent with each other
(nodules.csv labels = label map values = DICOM-SEG segments = radiomics rows), in the scan's
geometry, and nothing written when the input or a checkpoint is bad.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_writer import write_series
from predict_helpers import LUNGSEG, export_series
from scan_helpers import tiny_bundles

from lungseg.cli import main
from lungseg.predict.pipeline import OUTPUTS


def lungseg_predict(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line, in a new process."""
    return subprocess.run(
        [*LUNGSEG, "predict", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def predict_here(capsys, *args) -> tuple[int, str]:
    """The same command line in this process (no second torch import): (exit code, stderr)."""
    code = main(["predict", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def one_series(sample_lidc, tmp_path_factory) -> tuple[Path, str]:
    """A sample series copied into a non-LIDC layout: one flat folder, files renamed."""
    return export_series(sample_lidc, tmp_path_factory.mktemp("export") / "CT chest, exported")


@pytest.fixture(scope="module")
def predicted(one_series, tmp_path_factory, request) -> tuple[Path, Path]:
    folder, uid = one_series
    work = tmp_path_factory.mktemp("predict")
    detector, segmenter = tiny_bundles(work / "bundles", threshold=0.0)  # keep every candidate
    result = lungseg_predict(
        folder, "--out", work / "out", "--detector", detector, "--segmenter", segmenter,
        cwd=Path(request.config.rootpath),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "out" / uid, folder


@pytest.mark.slow  # the real command in a new process, networks and radiomics included (~25 s)
def test_every_output_is_written_and_they_agree(predicted):
    out, _ = predicted
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    nodules = pd.read_csv(out / "nodules.csv")
    assert len(nodules) >= 1
    assert list(nodules["label"]) == list(range(1, len(nodules) + 1))
    labels = np.asarray(nib.load(out / "nodules.nii.gz").dataobj)
    assert sorted(set(np.unique(labels)) - {0}) == list(nodules["label"])
    for row in nodules.itertuples():
        assert (labels == row.label).sum() == row.voxels
    radiomics = pd.read_csv(out / "radiomics.csv")
    assert list(radiomics["label"]) == list(nodules["label"])
    assert any(c.startswith("original_shape_") for c in radiomics.columns)
    seg = pydicom.dcmread(out / "nodules.seg.dcm")
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(nodules)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == [
        "read",
        "detect",
        "segment",
        "write",
        "radiomics",
    ]
    assert summary["nodules"] == len(nodules) and summary["dicom_seg"] is True


@pytest.mark.slow  # shares the run above
def test_the_nifti_image_is_the_dicom_series_in_its_geometry(predicted):
    out, folder = predicted
    image = nib.load(out / "image.nii.gz")
    data = np.asarray(image.dataobj)
    slices = sorted(
        (pydicom.dcmread(f) for f in folder.iterdir()),
        key=lambda ds: float(ds.ImagePositionPatient[2]),  # axial series: ascending z
    )
    assert data.shape == (slices[0].Columns, slices[0].Rows, len(slices))
    for k, row, column in [(0, 7, 5), (len(slices) // 2, 300, 100), (len(slices) - 1, 511, 0)]:
        ds = slices[k]
        row_dir = np.array(ds.ImageOrientationPatient[:3], dtype=float)
        col_dir = np.array(ds.ImageOrientationPatient[3:], dtype=float)
        between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
        lps = (np.array(ds.ImagePositionPatient, dtype=float) + column * between_columns * row_dir
               + row * between_rows * col_dir)  # fmt: skip
        ras = image.affine @ np.array([column, row, k, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)
        hu = ds.pixel_array[row, column] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert data[column, row, k] == hu


def test_a_scan_without_nodules_gives_empty_tables_and_no_segmentation(
    one_series, tmp_path, capsys
):
    folder, uid = one_series
    detector, segmenter = tiny_bundles(tmp_path / "bundles", threshold=None)  # nothing kept
    code, err = predict_here(
        capsys, folder, "--out", tmp_path / "out", "--detector", detector, "--segmenter", segmenter
    )
    assert code == 0, err[-3000:]
    out = tmp_path / "out" / uid
    assert len(pd.read_csv(out / "nodules.csv")) == 0
    assert list(pd.read_csv(out / "radiomics.csv").columns) == ["label"]
    assert not np.asarray(nib.load(out / "nodules.nii.gz").dataobj).any()
    assert not (out / "nodules.seg.dcm").exists()
    assert json.loads((out / "summary.json").read_text())["dicom_seg"] is False


def _mr(tmp_path: Path) -> tuple[list[Path], str]:
    write_series(tmp_path / "mr", np.zeros((4, 8, 8), np.int16), modality="MR")
    return [tmp_path / "mr"], "modality MR, not CT"


def _mixed(tmp_path: Path) -> tuple[list[Path], str]:
    image = np.zeros((4, 8, 8), np.int16)
    write_series(tmp_path / "two", image, name="a{}.dcm", series_uid="1.2.3.4.1")
    write_series(tmp_path / "two", image, name="b{}.dcm", series_uid="1.2.3.4.2")
    return [tmp_path / "two"], "mixed in one folder"


def _one_slice(tmp_path: Path) -> tuple[list[Path], str]:
    write_series(tmp_path / "one", np.zeros((1, 8, 8), np.int16))
    return [tmp_path / "one"], "only 1 CT image"


@pytest.mark.parametrize("make", [_mr, _mixed, _one_slice], ids=lambda f: f.__name__)
def test_bad_input_names_the_folder_and_writes_nothing(one_series, tmp_path, make, capsys):
    good, _ = one_series
    folders, message = make(tmp_path)
    detector, segmenter = tiny_bundles(tmp_path / "bundles")
    code, err = predict_here(
        capsys,
        good,
        *folders,
        "--out",
        tmp_path / "out",
        "--detector",
        detector,
        "--segmenter",
        segmenter,
    )
    assert code == 1
    assert message in err and str(folders[0]) in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("which", ["detector", "segmenter"])
@pytest.mark.parametrize("problem", ["corrupt", "training checkpoint", "swapped"])
def test_a_bad_checkpoint_is_named_and_nothing_is_written(
    one_series, tmp_path, which, problem, capsys
):
    folder, _ = one_series
    detector, segmenter = tiny_bundles(tmp_path / "bundles")
    paths = {"detector": detector, "segmenter": segmenter}
    bad = tmp_path / f"bad_{which}.pt"
    if problem == "corrupt":
        bad.write_bytes(paths[which].read_bytes()[:500])
    elif problem == "training checkpoint":
        import torch

        torch.save({"format": 1, "model": {}, "optimizer": {}, "history": []}, bad)
    else:
        other = "segmenter" if which == "detector" else "detector"
        shutil.copy(paths[other], bad)
    paths[which] = bad
    code, err = predict_here(
        capsys,
        folder,
        "--out",
        tmp_path / "out",
        "--detector",
        paths["detector"],
        "--segmenter",
        paths["segmenter"],
    )
    assert code == 1, err[-2000:]
    assert str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
