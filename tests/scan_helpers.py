"""Helpers of the prediction tests: small real CT series (pydicom) and predictor bundles.

- ``write_ct_series(folder, image_zyx, ...)``: one CT Image Storage file per slice, with the
  geometry given (ImagePositionPatient per slice along the orientation's normal); returns the
  series UID. ``modality``, ``series_uid`` and ``name`` (file name pattern) can be chosen.
- ``tiny_bundles(dest, threshold=...)``: a detector and a segmenter bundle of small untrained
  networks (weights of a seeded initialisation), written with lungseg's bundle writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from lungseg.core.settings import schema_defaults
from lungseg.nets.models import build_model
from lungseg.predict.bundle import BUNDLE_FORMAT, DETECTOR, SEGMENTER, save_bundle


def write_ct_series(
    folder: Path,
    image_zyx: np.ndarray,
    spacing=(2.5, 0.8, 0.8),
    origin_xyz=(-100.0, -120.0, 50.0),
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    modality: str = "CT",
    series_uid: str | None = None,
    name: str = "slice{:04d}.dcm",
) -> str:
    """Write ``image_zyx`` (HU) as a CT series; slice k lies at origin + k * spacing * normal."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    for k, pixels in enumerate(np.asarray(image_zyx)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.Modality = modality
        ds.PatientID, ds.PatientName = "CASE-0001", "CASE-0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = np.asarray(origin_xyz, dtype=float) + k * spacing[0] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[2]:g}"]
        ds.SliceThickness = f"{spacing[0]:g}"
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.PixelData = np.asarray(pixels, dtype=np.int16).tobytes()
        ds.save_as(folder / name.format(k + 1), enforce_file_format=True)
    return series_uid


def _state(settings: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    return build_model(settings).state_dict()


def tiny_bundles(dest: Path, threshold: float | None = 0.0) -> tuple[Path, Path]:
    """(detector.pt, segmenter.pt) of untrained width-2 U-Nets; detector canvas 8 mm."""
    dest.mkdir(parents=True, exist_ok=True)
    detection = schema_defaults("detection")
    volumes = detection.pop("volumes") | {"spacing": [8.0, 8.0, 8.0], "shape": [24, 48, 48]}
    detection.pop("resources")
    detector_settings = detection | {"arch": "unet", "mode": "whole", "channels": 2, "levels": 2}
    detector_settings["deep_supervision"] = False
    segmenter_settings = schema_defaults("training") | {"arch": "unet", "channels": 2, "levels": 2}
    segmenter_settings.pop("resources")
    detector = {
        "kind": DETECTOR,
        "format": BUNDLE_FORMAT,
        "name": "tiny_detector",
        "settings": detector_settings,
        "volumes": volumes,
        "operating_point": {"threshold": threshold, "fps_per_scan_target": 1.0},
        "epoch": 0,
        "model": _state(detector_settings, 0),
    }
    segmenter = {
        "kind": SEGMENTER,
        "format": BUNDLE_FORMAT,
        "name": "tiny_segmenter",
        "settings": segmenter_settings,
        "crop_size": [16, 16, 16],
        "target_spacing": [1.0, 1.0, 1.0],
        "epoch": 0,
        "model": _state(segmenter_settings, 1),
    }
    save_bundle(detector, dest / "detector.pt")
    save_bundle(segmenter, dest / "segmenter.pt")
    return dest / "detector.pt", dest / "segmenter.pt"
