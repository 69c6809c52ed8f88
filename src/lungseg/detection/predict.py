"""Candidates of every validation scan: results/detection/{detector}/candidates.csv.

Columns: LUNA16's submission columns ``seriesuid, coordX, coordY, coordZ, probability`` (patient
coordinates in mm: x along the columns, y along the rows, z the slice position), then
``patient_id, center_z, center_y, center_x`` (the same point in voxels of
results/volumes/<patient>/<series>.h5) and ``diameter_mm``; highest probability first within a
scan, at most ``max_candidates`` a scan, scans in scan-table order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.dataset.crops import volume_locator
from lungseg.detection.candidates import candidates_of
from lungseg.detection.inference import probability_map, search_volume
from lungseg.detection.scans import read_scan_table
from lungseg.detection.settings import DetectorSettings
from lungseg.detection.volumes import to_source_voxels, to_world
from lungseg.inference.model import choose_device, load_model
from lungseg.io.hdf5 import read_attrs, read_volume

logger = logging.getLogger(__name__)

COLUMNS = [
    "seriesuid",
    "coordX",
    "coordY",
    "coordZ",
    "probability",
    "patient_id",
    "center_z",
    "center_y",
    "center_x",
    "diameter_mm",
]


def scan_candidates(
    probability: np.ndarray, attrs: dict, settings: DetectorSettings, trained: dict
) -> pd.DataFrame:
    """One scan's candidates in the candidates.csv columns (method: the trained detector's).

    ``attrs``: the detection volume's attrs (``series_uid, patient_id``, canvas ``spacing``, and
    the geometry ``step, offset, source_spacing, source_origin, source_direction``): the one
    source of geometry; the scan table's geometry columns are never read."""
    found = candidates_of(
        probability,
        trained,
        attrs["spacing"],
        settings.candidate_threshold,
        settings.max_candidates,
    )
    source = to_source_voxels(found[["center_z", "center_y", "center_x"]].to_numpy(), attrs)
    world = to_world(source, attrs)
    return pd.DataFrame(
        {
            "seriesuid": attrs["series_uid"],
            "coordX": world[:, 0],
            "coordY": world[:, 1],
            "coordZ": world[:, 2],
            "probability": found["probability"].to_numpy(),
            "patient_id": attrs["patient_id"],
            "center_z": source[:, 0],
            "center_y": source[:, 1],
            "center_x": source[:, 2],
            "diameter_mm": found["diameter_mm"].to_numpy(),
        },
        columns=COLUMNS,
    )


def searched_scan(
    detection_volume: str | Path, locate: Callable[[str, str], Path] | None, trained: dict
) -> tuple[np.ndarray, dict]:
    """(HU canvas, attrs) a trained detector searches: its detection volume as trained on, or,
    with ``test_spacing``, the scan's ``results/volumes`` file (``locate``) at that spacing
    (:func:`lungseg.detection.inference.search_volume`), with the attrs :func:`scan_candidates`
    reads."""
    if trained.get("test_spacing") is None:
        image, _, attrs = read_volume(detection_volume)
        return image, attrs
    attrs = read_attrs(detection_volume)  # its canvas is not searched: attributes only
    if locate is None:
        raise InputError(
            f"{detection_volume}: detector has test_spacing {trained['test_spacing']}, "
            "which needs the scans' results/volumes files (source_volumes)"
        )
    source_image, _, source = read_volume(locate(attrs["patient_id"], attrs["series_uid"]))
    hu, geometry, volumes = search_volume(source_image, source["spacing"], trained)
    return hu, {**attrs, **geometry, "spacing": tuple(volumes.spacing)}


def detect(
    *,
    scans: str,
    volumes: list[str],
    best: str,
    candidates: str,
    settings: DetectorSettings,
    source_volumes: list[str] | None = None,
    threads: int = 1,
    subset: str = "val",
) -> None:
    """Run the detector of ``best`` over every scan of ``subset`` (val: candidates.csv; train:
    the second stage's training candidates, train_candidates.csv). ``source_volumes``: the
    scans' results/volumes files, which a detector with ``test_spacing`` searches."""
    torch.set_num_threads(max(1, int(threads)))
    device = choose_device(settings.device)
    model, trained = load_model(best, str(device))
    # the job's inference settings: in the workflow those best.pt was trained with (the same
    # params); from the shell (`lungseg detect --test_spacing ...`) an experiment may change them
    trained = {**trained, "test_flips": settings.test_flips, "test_spacing": settings.test_spacing}
    table = read_scan_table(scans)
    locate = volume_locator(source_volumes) if source_volumes is not None else None
    frames = []
    for _, row in table[table["subset"] == subset].iterrows():
        image, attrs = searched_scan(row["path"], locate, trained)
        probability = probability_map(model, image, trained)
        found = scan_candidates(probability, attrs, settings, trained)
        logger.info(
            "%s: %d candidate(s), max probability %.3f",
            attrs["series_uid"],
            len(found),
            float(probability.max()),
        )
        frames.append(found)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    write_csv_atomic(candidates, out)
