"""DICOM Segmentation (BINARY) of found nodules, on the frames of the source CT.

A SEG references each CT instance it segments, so viewers (3D Slicer, OHIF) and radiomics tools
overlay it on the original series without resampling. One segment per nodule label, coded as
SNOMED CT "Morphologically Altered Structure" / "Nodule", made by an AUTOMATIC algorithm:
lungseg at its installed version.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from lungseg.core.atomic import atomic_path
from lungseg.core.errors import InputError

#: SCT 49755003; pydicom calls it by its older meaning "Morphologically Abnormal Structure"
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
NODULE = codes.SCT.Nodule
MANUFACTURER = MODEL_NAME = "lungseg"
DEVICE_SERIAL = "none"
logging.getLogger("highdicom").setLevel(logging.WARNING)  # INFO: a line per copied module


def lungseg_version() -> str:
    try:
        return metadata.version("lungseg")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


#: Patient/study attributes a SEG copies from its source (Type 2: present, may be empty). Many
#: exports (and the sample data) leave some out; highdicom then fails, so absent ones are added
#: empty to the in-memory copies (the source files are never written).
TYPE2_FROM_SOURCE = (
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
)


def read_sources(source_files: Sequence[str | os.PathLike[str]]) -> list[Dataset]:
    """The CT headers (no pixel data: highdicom needs only geometry and identifiers)."""
    datasets = []
    for path in source_files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as error:
            raise InputError(f"{path}: cannot read the source CT slice ({error})") from error
        for keyword in TYPE2_FROM_SOURCE:
            if keyword not in ds:
                setattr(ds, keyword, "")
        datasets.append(ds)
    return datasets


def segment_numbers(label_map_zyx: np.ndarray, segments: Sequence[tuple[int, str]]) -> np.ndarray:
    """The label map renumbered 1..n in ``segments`` order (0 stays background)."""
    labels = [int(label) for label, _name in segments]
    if len(set(labels)) != len(labels) or 0 in labels:
        raise ValueError(f"segment labels must be distinct and non-zero, got {labels}")
    # only the labelled voxels are looked at: a thin-slice scan has 10^8 voxels, a few thousand
    # of them nodules (np.unique and one comparison per label over all of them took ~1 s)
    flat = np.asarray(label_map_zyx).reshape(-1)
    where = np.flatnonzero(flat)
    values = flat[where]
    present = set(np.unique(values).tolist())
    unknown = sorted(present - set(labels))
    if unknown:
        raise ValueError(f"label map has labels {unknown} that no segment names")
    dtype = np.uint16 if len(labels) > 255 else np.uint8
    lookup = np.zeros(max(labels, default=0) + 1, dtype=dtype)
    lookup[labels] = np.arange(1, len(labels) + 1)
    numbered = np.zeros(label_map_zyx.shape, dtype=lookup.dtype)
    numbered.reshape(-1)[where] = lookup[values]
    return numbered


def write_dicom_seg(
    path: str | os.PathLike[str],
    label_map_zyx: np.ndarray,
    source_files: Sequence[str | os.PathLike[str]],
    segments: Sequence[tuple[int, str]],
    *,
    series_description: str = "lungseg nodules",
    series_number: int = 9001,
    content_label: str = "NODULES",
) -> Path | None:
    """Write a BINARY DICOM SEG of ``label_map_zyx`` on ``source_files``; returns its path.

    ``source_files`` are the CT slices in the label map's z order (``plan.slices``); segment
    number i + 1 is ``segments[i] = (label, name)``. Without segments nothing is written and
    None is returned: a SEG needs at least one segment, so a scan without nodules has no SEG.
    """
    if not segments:
        return None
    target = Path(path)
    label_map = np.asarray(label_map_zyx)
    sources = read_sources(source_files)
    if label_map.ndim != 3 or label_map.shape[0] != len(sources):
        raise ValueError(
            f"{target}: label map of shape {label_map.shape} for {len(sources)} source slices"
        )
    for ds, source in zip(sources, source_files, strict=True):
        if (int(ds.Rows), int(ds.Columns)) != label_map.shape[1:]:
            raise InputError(
                f"{source}: {ds.Rows} x {ds.Columns} pixels, "
                f"the label map's slices have {label_map.shape[1:]}"
            )
    version = lungseg_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="lungseg", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=CATEGORY,
            segmented_property_type=NODULE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {label}",
            tracking_uid=hd.UID(),
        )
        for number, (label, name) in enumerate(segments, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_numbers(label_map, segments),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=version,
        device_serial_number=DEVICE_SERIAL,
        content_label=content_label,
        content_description=series_description,
        series_description=series_description,
    )
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    return target
