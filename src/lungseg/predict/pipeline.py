"""``lungseg predict``: CT series in; nodules found, segmented, measured and exported.

Per series (steps timed in ``summary.json``): **read** (lungseg's DICOM reader), **detect** (the
detector on the whole scan, :mod:`lungseg.predict.find`), **segment** (the crop model on each
detection, masks pasted into the scan grid, :mod:`lungseg.predict.segment`), **write**
(nodules.csv, image.nii.gz, nodules.nii.gz, nodules.seg.dcm, overview.png) and **radiomics**
(radiomics.csv): the output formats are the writers of :data:`lungseg.predict.writers.WRITERS`,
run in order on one :class:`~lungseg.predict.writers.SeriesPrediction`. Everything of a series
is written into a staging folder next to ``DIR/<series_uid>/`` and moved there at the end: a
failed or killed run leaves no half result, and a rerun replaces the old one whole. A scan
without nodules gets empty tables, an empty label map and no DICOM-SEG (a Segmentation needs at
least one segment). Before any model is loaded or series read, the output folder is made, probed
with a real write and rid of the staging folders of killed runs (:mod:`lungseg.predict.outdir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lungseg.core.atomic import write_text_atomic
from lungseg.core.errors import InputError, OutputError
from lungseg.inference.model import choose_device
from lungseg.ingest.convert import series_paths
from lungseg.ingest.pixels import read_series
from lungseg.predict.bundle import (
    DETECTOR,
    SEGMENTER,
    bundle_model,
    bundle_models,
    read_bundle,
)
from lungseg.predict.find import detect_candidates, operating_threshold
from lungseg.predict.measure import measure_nodules
from lungseg.predict.outdir import (
    ensure_writable,
    prepare_out,
    remove_if_empty,
    remove_stale_staging,
    staging_name,
)
from lungseg.predict.segment import label_map, segment_candidates
from lungseg.predict.series import Scan, SeriesInput, find_series, read_scan, series_problem
from lungseg.predict.settings import PredictSettings
from lungseg.predict.steps import StepTimes
from lungseg.predict.writers import SeriesPrediction, output_files, write_outputs

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR = "results/predictor/detector.pt"
DEFAULT_SEGMENTER = "results/predictor/segmenter.pt"
#: every file of OUT/<series_uid>/: the writers' (lungseg.predict.writers.WRITERS), summary.json
OUTPUTS = (*output_files(), "summary.json")


@dataclass
class Predictor:
    """The two bundles and their networks, loaded once for every series."""

    detector: dict
    segmenter: dict
    detector_model: torch.nn.Module
    segmenter_model: torch.nn.Module | list[torch.nn.Module]  # a list: an ensemble
    settings: PredictSettings
    radiomics_params: Path
    rescorer_model: torch.nn.Module | None = None  # a second-stage detector's crop model


def load_predictor(detector: str, segmenter: str, settings: PredictSettings) -> Predictor:
    """Read and check both bundles and the radiomics parameters before any series is touched."""
    det = read_bundle(detector, DETECTOR)
    seg = read_bundle(segmenter, SEGMENTER)
    # the user's own file, else lungseg's packaged one (a wheel's too), else an InputError
    params = PredictSettings.radiomics_params_file(settings.radiomics_params)
    device = choose_device(settings.device)
    rescorer = bundle_model(det["rescorer"], device) if "rescorer" in det else None
    return Predictor(
        det, seg, bundle_model(det, device), bundle_models(seg, device), settings, params, rescorer
    )


def predict_scan(scan: Scan, predictor: Predictor, folder: Path, steps: StepTimes) -> pd.DataFrame:
    """Detect, segment, measure and export one read scan into the (empty) ``folder``."""
    with steps("detect"):
        candidates = detect_candidates(
            scan.image,
            scan.spacing,
            predictor.detector_model,
            predictor.detector,
            predictor.rescorer_model,
        )
    with steps("segment"):
        pieces = segment_candidates(
            scan.image, scan.spacing, candidates, predictor.segmenter_model, predictor.segmenter
        )
        labels, kept = label_map(scan.image.shape, pieces, predictor.settings.mask_threshold)
        probabilities = candidates["probability"].to_numpy()[kept]
        nodules = measure_nodules(
            scan.image, labels, probabilities, scan.spacing, scan.origin, scan.direction
        )
        small = nodules["diameter_mm"] < predictor.settings.min_diameter_mm
        if small.any():
            logger.info(
                "dropped %d segmented finding(s) under %g mm",
                int(small.sum()),
                predictor.settings.min_diameter_mm,
            )
            labels, probabilities = keep_labels(labels, nodules.loc[~small, "label"], probabilities)
            nodules = measure_nodules(
                scan.image, labels, probabilities, scan.spacing, scan.origin, scan.direction
            )
    result = SeriesPrediction(scan, labels, nodules, probabilities, predictor.radiomics_params)
    write_outputs(result, folder, predictor.settings, steps)  # timed: steps write, radiomics
    return nodules


def keep_labels(labels: np.ndarray, keep, probabilities) -> tuple[np.ndarray, np.ndarray]:
    """The label map with only ``keep`` (renumbered 1..N in order) and their probabilities."""
    keep = [int(k) for k in keep]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=labels.dtype)
    lookup[keep] = np.arange(1, len(keep) + 1)
    return lookup[labels], np.asarray(probabilities)[[k - 1 for k in keep]]


def _summary(scan: Scan, predictor: Predictor, nodules: pd.DataFrame, steps: StepTimes) -> dict:
    params = predictor.radiomics_params.read_bytes()
    return {
        "series_uid": scan.plan.series_uid,
        "patient_id": scan.plan.patient_id,
        "study_uid": scan.plan.study_uid,
        "folder": str(scan.series.folder),
        "shape": [int(n) for n in scan.image.shape],
        "spacing": [float(s) for s in scan.spacing],
        "notes": scan.plan.reason,
        "detector": predictor.detector["name"],
        "operating_threshold": operating_threshold(predictor.detector),
        "segmenter": predictor.segmenter["name"],
        # only for an ensemble: the summary of a single model's run is as before
        **(
            {"segmenter_ensemble_folds": predictor.segmenter["ensemble_folds"]}
            if predictor.segmenter.get("ensemble")
            else {}
        ),
        "mask_threshold": predictor.settings.mask_threshold,
        "min_diameter_mm": predictor.settings.min_diameter_mm,
        "radiomics_params": str(predictor.radiomics_params),
        "radiomics_params_sha256": hashlib.sha256(params).hexdigest(),
        "nodules": len(nodules),
        "dicom_seg": bool(len(nodules)),
        "lungseg": metadata.version("lungseg"),
        "steps": steps.rows,
    }


def write_series_result(scan: Scan, predictor: Predictor, target: Path, steps: StepTimes) -> int:
    """Predict one scan into ``target`` (a folder) as a whole: staged, then moved into place."""
    target = Path(target)
    staging = target.parent / staging_name(target.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as error:
        raise OutputError(f"{target}: cannot write the prediction ({error})") from error
    try:
        nodules = predict_scan(scan, predictor, staging, steps)
        summary = _summary(scan, predictor, nodules, steps)
        write_text_atomic(staging / "summary.json", json.dumps(summary, indent=2) + "\n")
        old = target.parent / staging_name(target.name, "old")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"{target}: cannot write the prediction ({error})") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: %d nodule(s) -> %s", scan.plan.series_uid, len(nodules), target)
    return len(nodules)


def run_predict(
    *,
    series_dirs: list[str],
    out: str,
    detector: str = DEFAULT_DETECTOR,
    segmenter: str = DEFAULT_SEGMENTER,
    settings: PredictSettings,
    threads: int = 1,
) -> None:
    """Find, segment and measure the nodules of every CT series under SERIES_DIR...

    Writes OUT/<series_uid>/ per series: nodules.csv, image.nii.gz, nodules.nii.gz,
    nodules.seg.dcm, radiomics.csv, overview.png, summary.json (docs/predict.md). Every series
    and both checkpoints are checked before anything is written.
    """
    torch.set_num_threads(max(1, int(threads)))
    out_root = Path(out)
    created = prepare_out(out_root)  # writable, stale staging folders gone: before any work
    try:
        found = find_series(series_dirs, settings.spacing_tolerance)
        predictor = load_predictor(detector, segmenter, settings)
    except BaseException:
        if created:
            remove_if_empty(out_root)
        raise
    logger.info("%d series to predict -> %s", len(found), out_root)
    for series in found:
        steps = StepTimes()
        with steps("read"):
            scan = read_scan(series, settings.spacing_tolerance)
        write_series_result(scan, predictor, out_root / series.series_uid, steps)


run_predict.positional = ("series_dirs",)


def run_predict_indexed(
    *,
    files: str,
    detector: str,
    segmenter: str,
    prediction: str,
    series_uid: str,
    settings: PredictSettings,
    threads: int = 1,
) -> None:
    """Rule ``predict``: one indexed series (files.csv), read from its DICOM files."""
    torch.set_num_threads(max(1, int(threads)))
    target = Path(prediction)
    ensure_writable(target.parent, "prediction folder")
    # this series' folders only: the other series' jobs may run on other machines
    remove_stale_staging(target.parent, target.name)
    predictor = load_predictor(detector, segmenter, settings)
    steps = StepTimes()
    with steps("read"):
        plan, image = read_series(series_paths(files, series_uid), settings.spacing_tolerance)
    if image is None or series_problem(plan):
        raise InputError(f"series {series_uid}: {series_problem(plan)}")
    scan = Scan(SeriesInput(Path(plan.slices[0].path).parent, plan), image)
    write_series_result(scan, predictor, target, steps)
