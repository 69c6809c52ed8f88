"""The cascade's scoring (lungseg.evaluation.cascade / cascade_run) on real HDF5 volumes and
prediction folders written with the predict writers: hits by LUNA16's radius rule, Dice in scan
space, false positives, and radiomics agreement of perfect masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from detection_helpers import ORIGIN, SPACING, chest_volume

from lungseg.evaluation.cascade import cascade_table
from lungseg.evaluation.cascade_run import run_cascade
from lungseg.evaluation.settings import BucketSettings
from lungseg.figures.cascade import run_plot_cascade
from lungseg.io.hdf5 import read_volume
from lungseg.predict.measure import measure_nodules
from lungseg.predict.nifti import write_nifti
from lungseg.predict.radiomics import extract_features
from lungseg.predict.settings import PredictSettings

DIRECTION = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
PARAMS = "src/lungseg/data/radiomics/params.yaml"
# (centre voxel zyx, diameter mm, in_cohort): two cohort nodules, one irrelevant finding
NODULES = [((12, 40, 26), 10.0, True), ((26, 50, 70), 14.0, True), ((20, 30, 66), 4.0, False)]


def write_prediction(folder: Path, volume: Path, labels: np.ndarray, radiomics: bool = False):
    """A prediction folder as `lungseg predict` writes it, from a given label map."""
    folder.mkdir(parents=True)
    image, _, attrs = read_volume(volume)
    n = int(labels.max())
    nodules = measure_nodules(image, labels, [0.9] * n, SPACING, ORIGIN, DIRECTION)
    nodules.to_csv(folder / "nodules.csv", index=False)
    write_nifti(folder / "nodules.nii.gz", labels.astype(np.uint8), SPACING, ORIGIN, DIRECTION)
    (folder / "summary.json").write_text(json.dumps({"series_uid": attrs["series_uid"]}))
    if radiomics:
        features = extract_features(
            image, labels, SPACING, ORIGIN, DIRECTION, list(range(1, n + 1)), PARAMS
        )
        features.to_csv(folder / "radiomics.csv", index=False)


@pytest.fixture
def scan(tmp_path):
    volume, table = chest_volume(tmp_path / "volumes", "P1", "1.2.3.4", NODULES)
    table.to_csv(tmp_path / "nodules.csv", index=False)
    crop = pd.DataFrame({"nodule_id": table["nodule_id"], "dice": [0.8, 0.9, 0.7]})
    crop.to_csv(tmp_path / "evaluation.csv", index=False)
    _, mask, _ = read_volume(volume)
    return tmp_path, volume, mask, table


def shifted(mask: np.ndarray, label: int, voxels: tuple[int, int, int]) -> np.ndarray:
    return np.roll(mask == label, voxels, axis=(0, 1, 2))


@pytest.mark.parametrize(
    ("predicted", "detected", "dice", "false_positives"),
    [
        # both nodules exactly: Dice 1, nothing false
        (lambda m: [m == 1, m == 2], [True, True], [1.0, 1.0], 0),
        # nodule 1 moved 2 voxels in x (2 mm < its 5 mm radius): a hit with lower Dice
        (lambda m: [shifted(m, 1, (0, 0, 2)), m == 2], [True, True], [None, 1.0], 0),
        # nodule 1 moved 5 voxels (5 mm = its radius: LUNA16 needs strictly within): a miss and
        # a false positive
        (lambda m: [shifted(m, 1, (0, 0, 5)), m == 2], [False, True], [0.0, 1.0], 1),
        # only the irrelevant finding found: neither a hit nor a false positive
        (lambda m: [m == 3], [False, False], [0.0, 0.0], 0),
        # nothing found
        (lambda m: [], [False, False], [0.0, 0.0], 0),
    ],
)
def test_hits_dice_and_false_positives(scan, predicted, detected, dice, false_positives):
    root, volume, mask, _ = scan
    labels = np.zeros(mask.shape, dtype=np.uint16)
    for k, part in enumerate(predicted(mask), start=1):
        labels[part & (labels == 0)] = k
    write_prediction(root / "pred", volume, labels)
    table, summary = cascade_table(
        [str(root / "pred")], str(root / "nodules.csv"), [str(volume)],
        str(root / "evaluation.csv"), [6, 10, 20],
    )  # fmt: skip
    assert list(table["detected"]) == detected
    for got, want in zip(table["dice"], dice, strict=True):
        if want is None:
            assert 0.3 < got < 0.95
        else:
            assert got == pytest.approx(want)
    assert list(table["crop_dice"]) == [0.8, 0.9]  # the irrelevant finding is no reference
    overall = summary[summary["size_bucket"] == "all"].iloc[0]
    assert overall["false_positives"] == false_positives
    assert overall["sensitivity"] == pytest.approx(np.mean(detected))
    assert table.loc[~table["detected"], "hd95_mm"].isna().all()


def test_perfect_masks_give_the_reference_radiomics(scan, tmp_path):
    root, volume, mask, table = scan
    labels = np.where(mask == 3, 0, mask).astype(np.uint16)  # the two cohort nodules exactly
    write_prediction(root / "pred", volume, labels, radiomics=True)
    (root / "choice.json").write_text(json.dumps({"segmenter": "unet"}))
    (root / "models" / "unet").mkdir(parents=True)
    (root / "evaluation.csv").rename(root / "models" / "unet" / "evaluation.csv")
    out = {name: str(tmp_path / "out" / name) for name in (
        "cascade.csv", "summary.csv", "reference.csv", "agreement.csv", "classes.csv",
        "cascade.png", "agreement.png")}  # fmt: skip
    run_cascade(
        predictions=[str(root / "pred")], nodules=str(root / "nodules.csv"),
        volumes=[str(volume)], evaluations=[str(root / "models" / "unet" / "evaluation.csv")],
        choice=str(root / "choice.json"), cascade=out["cascade.csv"], summary=out["summary.csv"],
        reference_features=out["reference.csv"], agreement=out["agreement.csv"],
        agreement_classes=out["classes.csv"], buckets=BucketSettings.from_config({}),
        settings=PredictSettings.from_config({"radiomics_params": PARAMS}),
    )  # fmt: skip
    agreement = pd.read_csv(out["agreement.csv"])
    defined = agreement["icc"].dropna()
    assert len(defined) > 50 and (defined > 0.999).all()
    assert (agreement["n"] == 2).all()
    classes = pd.read_csv(out["classes.csv"]).set_index("feature_class")
    assert classes.loc["all", "features"] == len(agreement)
    run_plot_cascade(
        cascade=out["cascade.csv"], summary=out["summary.csv"],
        reference_features=out["reference.csv"], agreement=out["agreement.csv"],
        agreement_classes=out["classes.csv"], cascade_figure=out["cascade.png"],
        agreement_figure=out["agreement.png"],
    )  # fmt: skip
    assert all(Path(p).stat().st_size > 0 for p in out.values())
