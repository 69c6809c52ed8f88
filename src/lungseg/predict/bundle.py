"""Predictor bundles: everything ``lungseg predict`` needs of a trained model, in one file.

A bundle is a ``torch.save`` dict (plain values and tensors, readable with
``weights_only=True``) with ``kind`` (``lungseg-detector`` or ``lungseg-segmenter``),
``format`` (:data:`BUNDLE_FORMAT`), ``name``, the network ``settings`` (architecture and HU
window), the ``model`` state and what turns a scan into the network's input:

- detector: ``volumes`` (the detection volumes' spacing, canvas and lung box settings, as its
  checkpoint recorded them at training) and the ``operating_point`` (probability threshold
  chosen on the validation FROC at ``detection.operating_fps`` false positives a scan; null when
  none was reachable), with the candidate settings it was chosen with;
- segmenter: ``crop_size`` and ``target_spacing`` of the crops it was trained on (its
  checkpoint's ``crop_grid``, from crops.h5).

Both come from the checkpoints, never from the config (which may have changed since), as
nnU-Net keeps its plans with the model.

Rule ``predictor`` writes ``results/predictor/detector.pt`` and ``segmenter.pt`` (the
workflow's best by default; ``choice.json`` says which and why).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lungseg.core.atomic import write_text_atomic, write_through_file
from lungseg.core.errors import InputError, SettingsError
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.nets.models import build_model
from lungseg.predict.settings import PredictorSettings

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
DETECTOR, SEGMENTER = "lungseg-detector", "lungseg-segmenter"
REBUILD = "rebuild it with `snakemake results/predictor/{name}.pt`"


def _plain(value: Any) -> Any:
    """Tuples as lists (what ``weights_only`` loading and JSON both take)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _bundle(kind: str, state: dict[str, Any], name: str, **extra: Any) -> dict[str, Any]:
    """A bundle of ``kind``: the header, the checkpoint's settings, ``extra``, epoch and model."""
    return {
        "kind": kind,
        "format": BUNDLE_FORMAT,
        "name": name,
        "settings": _plain(dict(state["settings"])),
        **extra,
        "epoch": int(state["epoch"]),
        "model": state["model"],
    }


#: what a detector's checkpoint must record of its detection volumes
VOLUME_KEYS = ("spacing", "shape", "body_threshold_hu", "margin_mm", "pad_hu")


def _recorded(checkpoint: str | Path, state: dict, what: str, keys: Sequence[str]) -> dict:
    """``what`` of a checkpoint, with every key of ``keys``; else an :class:`InputError`."""
    found = state.get(what) or {}
    missing = [key for key in keys if key not in found]
    if missing:
        raise InputError(
            f"{checkpoint}: the checkpoint does not record its {what} ({', '.join(missing)} "
            "missing: trained by an earlier lungseg); train it again"
        )
    return {key: _plain(found[key]) for key in keys}


def detector_bundle(checkpoint: str | Path, operating_point: dict, name: str) -> dict[str, Any]:
    """The detector bundle of a trained detector's best.pt and its operating_point.json; the
    volume geometry is the one it was trained on (its checkpoint's settings)."""
    state = read_checkpoint(checkpoint)
    volumes = _recorded(checkpoint, state["settings"], "volumes", VOLUME_KEYS)
    keys = ("threshold", "fps_per_scan_target", "fps_per_scan", "sensitivity")
    return _bundle(
        DETECTOR,
        state,
        name,
        volumes=volumes,
        operating_point={key: operating_point.get(key) for key in keys},
    )


def segmenter_bundle(checkpoint: str | Path, name: str) -> dict[str, Any]:
    """The segmenter bundle of a crop model's best.pt with the crop grid it was trained on."""
    state = read_checkpoint(checkpoint)
    grid = _recorded(checkpoint, state, "crop_grid", ("crop_size", "target_spacing"))
    return _bundle(SEGMENTER, state, name, **grid)


def save_bundle(bundle: dict[str, Any], path: str | Path) -> None:
    write_through_file(path, lambda file: torch.save(bundle, file))


def read_bundle(path: str | Path, kind: str) -> dict[str, Any]:
    """A bundle of ``kind``; :class:`InputError` naming the file when it is anything else."""
    path = Path(path)
    what = "detector" if kind == DETECTOR else "segmenter"
    rebuild = REBUILD.format(name=what)
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found; {rebuild}")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(
            f"{path}: not a readable lungseg {what} (truncated, corrupt or not written by "
            f"torch.save: {type(error).__name__}); {rebuild}"
        ) from error
    if not isinstance(bundle, dict) or "kind" not in bundle:
        hint = " (a training checkpoint: pass results/predictor/" if _is_checkpoint(bundle) else ""
        hint = f"{hint}{what}.pt)" if hint else ""
        raise InputError(f"{path}: not a lungseg {what} bundle{hint}; {rebuild}")
    if bundle["kind"] != kind:
        raise InputError(f"{path}: a {bundle['kind']} file, but a {kind} is needed here")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise InputError(
            f"{path}: {what} of bundle format {bundle.get('format')!r}; this lungseg reads "
            f"format {BUNDLE_FORMAT}; {rebuild}"
        )
    return bundle


def _is_checkpoint(value: Any) -> bool:
    return isinstance(value, dict) and {"model", "optimizer", "history"} <= set(value)


def bundle_model(bundle: dict[str, Any], device: torch.device | str) -> torch.nn.Module:
    """The bundle's network in eval mode on ``device``."""
    model = build_model(bundle["settings"])
    try:
        model.load_state_dict(bundle["model"])
    except RuntimeError as error:
        raise InputError(
            f"{bundle.get('name')}: weights do not fit the network its settings describe ({error})"
        ) from error
    return model.to(device).eval()


def _choose(table, column: str, wanted: str, key: str, ranking: list[str], source: str):
    """(name, why): ``wanted`` when it is in ``table[column]``, else the first by ``ranking``
    (descending, then the name ascending)."""
    if wanted != "best":
        if wanted not in set(table[column]):
            raise SettingsError(
                f"predict.{key} = {wanted!r}: not in {source} ({sorted(table[column])})"
            )
        return wanted, f"predict.{key}"
    order = [*ranking, column]
    ascending = [False] * len(ranking) + [True]
    best = table.sort_values(order, ascending=ascending, kind="stable").iloc[0]
    return str(best[column]), f"highest {ranking[0]} ({best[ranking[0]]:.3f}) in {source}"


def choose_detector(table: pd.DataFrame, wanted: str) -> tuple[str, str]:
    """(detector, why) from results/detection.csv: ``wanted``, or the best by CPM (ties: the
    sensitivity at 8 FPs a scan, then the name)."""
    return _choose(
        table, "detector", wanted, "detector_name", ["cpm", "sensitivity_8"], "detection.csv"
    )


def choose_segmenter(table: pd.DataFrame, wanted: str) -> tuple[str, str]:
    """(model, why) from results/evaluation.csv: ``wanted``, or the best by mean Dice over
    all nodules (ties: the name)."""
    overall = table[table["size_bucket"] == "all"]
    return _choose(overall, "model", wanted, "segmenter_name", ["dice_mean"], "evaluation.csv")


def _by_parent(paths: Sequence[str]) -> dict[str, str]:
    """``results/<kind>/<name>/file`` -> {name: path}."""
    return {Path(p).parent.name: str(p) for p in paths}


def write_predictor(
    *,
    detection_table: str,
    evaluation_table: str,
    detector_checkpoints: list[str],
    operating_points: list[str],
    segmenter_checkpoints: list[str],
    detector: str,
    segmenter: str,
    choice: str,
    settings: PredictorSettings,
) -> None:
    """Bundle the chosen detector and crop model for ``lungseg predict``; record the choice."""
    detector_name, detector_why = choose_detector(
        pd.read_csv(detection_table), settings.detector_name
    )
    segmenter_name, segmenter_why = choose_segmenter(
        pd.read_csv(evaluation_table), settings.segmenter_name
    )
    point_file = _by_parent(operating_points)[detector_name]
    with open(point_file) as f:
        point = json.load(f)
    det = detector_bundle(_by_parent(detector_checkpoints)[detector_name], point, detector_name)
    seg = segmenter_bundle(_by_parent(segmenter_checkpoints)[segmenter_name], segmenter_name)
    save_bundle(det, detector)
    save_bundle(seg, segmenter)
    threshold = det["operating_point"]["threshold"]
    record = {
        "detector": detector_name,
        "detector_reason": detector_why,
        "segmenter": segmenter_name,
        "segmenter_reason": segmenter_why,
        "operating_point": det["operating_point"],
        "note": "threshold null: no candidate is kept (the FROC never reached the target)"
        if threshold is None or not np.isfinite(float(threshold))
        else "",
    }
    write_text_atomic(choice, json.dumps(record, indent=2) + "\n")
    logger.info(
        "predictor: detector %s (%s), segmenter %s (%s)",
        detector_name,
        detector_why,
        segmenter_name,
        segmenter_why,
    )
