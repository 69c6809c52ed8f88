"""Predictor bundles: everything ``lungseg predict`` needs of a trained model, in one file.

A bundle is a ``torch.save`` dict (plain values and tensors, readable with
``weights_only=True``) with ``kind`` (``lungseg-detector`` or ``lungseg-segmenter``),
``format`` (:data:`BUNDLE_FORMAT`), ``name``, the network ``settings`` (architecture and HU
window), the ``model`` state and what turns a scan into the network's input:

- detector: ``volumes`` (the detection volumes' spacing, canvas and lung box settings, as its
  checkpoint recorded them at training) and the ``operating_point`` (probability threshold
  chosen on the validation FROC at ``detection.operating_fps`` false positives a scan; null when
  none was reachable), with the candidate settings it was chosen with; a second stage (mode
  rescore) is its stage-1 detector's bundle with ``stage1`` (that detector's name) and
  ``rescorer`` (the crop model's ``settings``, ``model``, ``crop_size``, ``target_spacing``);
- segmenter: ``crop_size`` and ``target_spacing`` of the crops it was trained on (its
  checkpoint's ``crop_grid``, from crops.h5); optionally ``ensemble`` (the model states of the
  cross-validation folds' models, ``predict.ensemble_folds``) and ``ensemble_folds`` (their
  fold numbers): then ``lungseg predict`` averages their probabilities instead of running
  ``model``. A bundle without them (or with an empty list) uses ``model`` alone, as every
  bundle written before them does.

Both come from the checkpoints, never from the config (which may have changed since), as
nnU-Net keeps its plans with the model.

Rule ``predictor`` writes ``results/predictor/detector.pt`` and ``segmenter.pt`` (the
workflow's best by default; ``choice.json`` says which and why).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lungseg.core.atomic import write_text_atomic, write_through_file
from lungseg.core.errors import InputError, SettingsError
from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import read_checkpoint
from lungseg.nets.models import ModelSettings, build_model
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


def detector_bundle(
    checkpoint: str | Path,
    operating_point: dict,
    name: str,
    checkpoints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The detector bundle of a trained detector's best.pt and its operating_point.json; the
    volume geometry is the one it was trained on (its checkpoint's settings).

    A second stage (mode rescore) is bundled as its stage-1 detector (``checkpoints``: name ->
    best.pt of every detector) with this detector's name and operating point, and
    ``rescorer``: the crop model's ``settings``, ``model`` and ``crop_grid``."""
    state = read_checkpoint(checkpoint)
    keys = ("threshold", "fps_per_scan_target", "fps_per_scan", "sensitivity")
    point = {key: operating_point.get(key) for key in keys}
    if state["settings"].get("mode") == "rescore":
        stage1 = str(state["settings"]["stage1"])
        if stage1 not in (checkpoints or {}):
            raise InputError(f"{checkpoint}: its stage-1 detector {stage1!r} has no best.pt here")
        grid = _recorded(checkpoint, state, "crop_grid", ("crop_size", "target_spacing"))
        first = detector_bundle(checkpoints[stage1], {}, name)
        rescorer = {
            "name": name,
            "settings": _plain(dict(state["settings"])),
            "model": state["model"],
        }
        return {
            **first,
            "operating_point": point,
            "stage1": stage1,
            "rescorer": {**rescorer, **grid},
        }
    volumes = _recorded(checkpoint, state["settings"], "volumes", VOLUME_KEYS)
    return _bundle(DETECTOR, state, name, volumes=volumes, operating_point=point)


#: the settings every member of an ensemble shares with the single model: the network
#: (:class:`lungseg.nets.models.ModelSettings`) and the intensity window ``predict`` applies
NETWORK_KEYS = (*(f.name for f in fields(ModelSettings)), "hu_min", "hu_max")


def network_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The :data:`NETWORK_KEYS` of a checkpoint's settings (left-out keys: the schema's)."""
    merged = {**schema_defaults("training"), **settings}
    return {key: _plain(merged[key]) for key in NETWORK_KEYS}


def segmenter_bundle(
    checkpoint: str | Path, name: str, fold_checkpoints: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """The segmenter bundle of a crop model's best.pt with the crop grid it was trained on.

    ``fold_checkpoints`` (the best.pt of ``results/models/<name>/fold_<k>/``): an ensemble of
    these folds' models (``ensemble``, ``ensemble_folds``, in fold order); each must record the
    single model's crop grid and network settings (:data:`NETWORK_KEYS`), else an
    :class:`InputError` naming the checkpoint and the key. Empty: no ensemble keys at all."""
    state = read_checkpoint(checkpoint)
    grid = _recorded(checkpoint, state, "crop_grid", ("crop_size", "target_spacing"))
    members = sorted((fold_number(path), str(path)) for path in fold_checkpoints)
    extra: dict[str, Any] = {}
    if members:
        network = network_settings(state["settings"])
        states = []
        for _, path in members:
            fold = read_checkpoint(path)
            require_same(path, "crop_grid", grid, _recorded(path, fold, "crop_grid", tuple(grid)))
            require_same(path, "settings", network, network_settings(fold["settings"]))
            states.append(fold["model"])
        extra = {"ensemble": states, "ensemble_folds": [k for k, _ in members]}
    return _bundle(SEGMENTER, state, name, **grid, **extra)


def fold_number(path: str | Path) -> int:
    """``k`` of ``.../fold_<k>/best.pt``; an :class:`InputError` naming the path otherwise."""
    folder = Path(path).parent.name
    number = folder.removeprefix("fold_")
    if folder == number or not number.isdigit():
        raise InputError(f"{path}: not a fold's checkpoint (expected .../fold_<k>/best.pt)")
    return int(number)


def require_same(
    path: str | Path, what: str, expected: dict, found: dict, reference: str = "the single model"
) -> None:
    """Nothing when ``found`` has every key of ``expected`` with its value; else an
    :class:`InputError` naming ``path`` and the first key where ``found`` differs."""
    for key, value in expected.items():
        if found.get(key) != value:
            raise InputError(
                f"{path}: {what}.{key} is {found.get(key)!r}, {reference}'s is {value!r}; "
                "an ensemble's members must share the crop grid and network settings"
            )


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


def bundle_model(
    bundle: dict[str, Any], device: torch.device | str, state: dict | None = None
) -> torch.nn.Module:
    """The bundle's network in eval mode on ``device`` (with ``state``: those weights)."""
    model = build_model(bundle["settings"])
    try:
        model.load_state_dict(bundle["model"] if state is None else state)
    except RuntimeError as error:
        raise InputError(
            f"{bundle.get('name')}: weights do not fit the network its settings describe ({error})"
        ) from error
    return model.to(device).eval()


def bundle_models(
    bundle: dict[str, Any], device: torch.device | str
) -> torch.nn.Module | list[torch.nn.Module]:
    """What ``lungseg.inference.model.predict`` runs for the bundle: its ``ensemble``'s
    networks (a list, one per fold) when it has one, else its single network."""
    states = bundle.get("ensemble") or []
    if not states:
        return bundle_model(bundle, device)
    return [bundle_model(bundle, device, state) for state in states]


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


def _fold_checkpoints(paths: Sequence[str], model: str) -> list[str]:
    """The ``results/models/<model>/fold_<k>/best.pt`` among ``paths``; an
    :class:`InputError` when there is none."""
    mine = [str(p) for p in paths if Path(p).parent.parent.name == model]
    if not mine:
        raise InputError(
            f"predict.ensemble_folds: no fold checkpoint of model {model!r} among the rule's "
            "inputs (results/models/<model>/fold_<k>/best.pt; split.folds >= 2 trains them)"
        )
    return mine


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
    fold_checkpoints: list[str] | None = None,
) -> None:
    """Bundle the chosen detector and crop model for ``lungseg predict``; record the choice.

    With ``predict.ensemble_folds`` the segmenter also carries the chosen model's fold models
    (among ``fold_checkpoints``) as its ensemble; ``choice`` then records their folds
    (``segmenter_ensemble_folds``; absent: the single model, as before the setting existed)."""
    detector_name, detector_why = choose_detector(
        pd.read_csv(detection_table), settings.detector_name
    )
    segmenter_name, segmenter_why = choose_segmenter(
        pd.read_csv(evaluation_table), settings.segmenter_name
    )
    point_file = _by_parent(operating_points)[detector_name]
    with open(point_file) as f:
        point = json.load(f)
    checkpoints = _by_parent(detector_checkpoints)
    det = detector_bundle(checkpoints[detector_name], point, detector_name, checkpoints)
    folds = (
        _fold_checkpoints(fold_checkpoints or [], segmenter_name) if settings.ensemble_folds else []
    )
    seg = segmenter_bundle(_by_parent(segmenter_checkpoints)[segmenter_name], segmenter_name, folds)
    save_bundle(det, detector)
    save_bundle(seg, segmenter)
    threshold = det["operating_point"]["threshold"]
    record = {
        "detector": detector_name,
        "detector_reason": detector_why,
        "segmenter": segmenter_name,
        "segmenter_reason": segmenter_why,
        **({"segmenter_ensemble_folds": seg["ensemble_folds"]} if folds else {}),
        "operating_point": det["operating_point"],
        "note": "threshold null: no candidate is kept (the FROC never reached the target)"
        if threshold is None or not np.isfinite(float(threshold))
        else "",
    }
    write_text_atomic(choice, json.dumps(record, indent=2) + "\n")
    logger.info(
        "predictor: detector %s (%s), segmenter %s (%s)%s",
        detector_name,
        detector_why,
        segmenter_name,
        segmenter_why,
        f", ensemble of folds {seg['ensemble_folds']}" if folds else "",
    )
