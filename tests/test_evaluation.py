"""Evaluation: per-nodule metrics of a real trained checkpoint, size buckets, summary; Snakemake
rules evaluate/plots and the report on real files."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from workflow_helpers import copy_workflow

from lungseg.cli import main
from lungseg.evaluation import evaluate as evaluation
from lungseg.evaluation.settings import EvaluationSettings

REPO = Path(__file__).resolve().parents[1]
SPACING = (2.5, 0.7, 0.7)
SIZE = 16
#: The schema's evaluation settings (what an empty config gives).
EVALUATION = EvaluationSettings.from_config({})
# nodule id, patient, radius (voxels), diameter_mm (table), subset
CROPS = [
    ("P0_n01", "P0", 2, 4.0, "train"),
    ("P0_n02", "P0", 4, 8.0, "train"),
    ("P1_n01", "P1", 3, 5.5, "val"),
    ("P1_n02", "P1", 5, 14.0, "val"),
    ("P2_n01", "P2", 3, 6.0, "train"),
    ("P2_n02", "P2", 5, 12.0, "train"),
    ("P3_n01", "P3", 4, 9.0, "val"),
    ("P3_n02", "P3", 6, 25.0, "val"),
]
VAL = [c[0] for c in CROPS if c[4] == "val"]
TINY_UNET = {"arch": "unet", "channels": 2, "levels": 2, "blocks_per_level": 1, "epochs": 2,
             "batch_size": 2, "seed": 0, "amp": False}  # fmt: skip


def write_crops(directory: Path) -> dict[str, np.ndarray]:
    """Crops in the contract format: spheres in noise, one crop with a second nodule (other)."""
    rng = np.random.default_rng(0)
    n = len(CROPS)
    images = rng.normal(-800, 30, (n, SIZE, SIZE, SIZE)).astype(np.int16)
    masks = np.zeros(images.shape, dtype=np.uint8)
    other = np.zeros(images.shape, dtype=np.uint8)
    z, y, x = np.mgrid[:SIZE, :SIZE, :SIZE]
    for i, (_, _, radius, _, _) in enumerate(CROPS):
        masks[i] = ((z - 8) / 3.5) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 <= radius**2
    other[2, :3, :3, :3] = 1
    images[(masks | other) > 0] = 30
    with h5py.File(directory / "crops.h5", "w") as file:
        file["image"], file["mask"], file["other"] = images, masks, other
        file.attrs["size"] = [SIZE] * 3  # the crop grid, as the crops rule records it
        file.attrs["target_spacing"] = str(list(SPACING))
    table = pd.DataFrame(
        {
            "nodule_id": [c[0] for c in CROPS],
            "patient_id": [c[1] for c in CROPS],
            "series_uid": "1.2.3",
            "center_z": 8,
            "center_y": 8,
            "center_x": 8,
            "spacing_z": SPACING[0],
            "spacing_y": SPACING[1],
            "spacing_x": SPACING[2],
            "diameter_mm": [c[3] for c in CROPS],
            "n_readers": [4, 3, 4, 3, 4, 3, 4, 3],
        }
    )
    table.to_csv(directory / "crops.csv", index=False)
    split = table[["nodule_id", "patient_id"]].assign(subset=[c[4] for c in CROPS])
    split.to_csv(directory / "split.csv", index=False)
    return {"image": images, "mask": masks, "other": other}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Crops and a checkpoint of the real trainer (tiny U-Net, two epochs)."""
    from lungseg.training.trainer import train

    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("evaluation")
    arrays = write_crops(directory)
    train(directory / "crops.h5", directory / "crops.csv", directory / "split.csv",
          directory / "model", TINY_UNET, device="cpu")  # fmt: skip
    return directory, arrays


def val_table(directory: Path) -> pd.DataFrame:
    table = pd.read_csv(directory / "crops.csv")
    return table[table["nodule_id"].isin(VAL)].reset_index(drop=True)


def test_perfect_prediction_scores_one_and_other_nodules_are_not_errors(trained):
    directory, arrays = trained
    rows = [i for i, c in enumerate(CROPS) if c[4] == "val"]
    masks, other = arrays["mask"][rows], arrays["other"][rows]
    # the model also finds the neighbouring nodule of crop P1_n01: not counted against it
    probabilities = ((masks | other) > 0).astype(np.float32)
    frame = evaluation.score_predictions(
        probabilities, masks, other, val_table(directory), EVALUATION.threshold
    )
    assert list(frame.columns) == evaluation.EVALUATION_COLUMNS
    assert list(frame["nodule_id"]) == VAL
    assert (frame["dice"] == 1).all() and (frame["iou"] == 1).all()
    assert (frame["hd95_mm"] == 0).all() and (frame["surface_dice_1mm"] == 1).all()
    voxel_mm3 = math.prod(SPACING)
    expected_volume = masks.reshape(len(rows), -1).sum(1) * voxel_mm3
    np.testing.assert_allclose(frame["true_volume_mm3"], expected_volume, rtol=1e-6)
    np.testing.assert_allclose(frame["predicted_volume_mm3"], expected_volume, rtol=1e-6)
    assert list(frame["size_bucket"]) == ["<6 mm", "10-20 mm", "6-10 mm", ">=20 mm"]
    assert list(frame["n_readers"]) == [4, 3, 4, 3]


def test_empty_prediction_is_a_miss_with_undefined_hd95(trained):
    directory, arrays = trained
    rows = [i for i, c in enumerate(CROPS) if c[4] == "val"]
    masks = arrays["mask"][rows]
    probabilities = np.full(masks.shape, 0.49, dtype=np.float32)  # just under the threshold
    frame = evaluation.score_predictions(probabilities, masks, arrays["other"][rows],
                                         val_table(directory), threshold=0.5)  # fmt: skip
    assert (frame["dice"] == 0).all() and (frame["surface_dice_1mm"] == 0).all()
    assert frame["hd95_mm"].isna().all() and (frame["predicted_volume_mm3"] == 0).all()
    summary = evaluation.summarise({"m": frame})
    assert summary.loc[0, "n_empty_predictions"] == 4
    assert math.isnan(summary.loc[0, "hd95_mm_mean"])


# diameters, edges, expected labels (left-closed buckets)
BUCKET_CASES = [
    ([3.0, 5.99, 6.0, 9.9, 10.0, 19.9, 20.0, 38.0], [6, 10, 20],
     ["<6 mm", "<6 mm", "6-10 mm", "6-10 mm", "10-20 mm", "10-20 mm", ">=20 mm", ">=20 mm"]),
    ([4.0, 8.0], [5.5], ["<5.5 mm", ">=5.5 mm"]),
    ([4.0, 8.0], [], ["all sizes", "all sizes"]),
]  # fmt: skip


@pytest.mark.parametrize("diameters, edges, expected", BUCKET_CASES)
def test_size_buckets(diameters, edges, expected):
    assert evaluation.size_bucket(diameters, edges) == expected


@pytest.mark.parametrize("edges", [[10, 6], [0, 5], [6, 6]])
def test_size_bucket_edges_must_increase(edges):
    with pytest.raises(ValueError, match="positive and increasing"):
        evaluation.size_bucket_labels(edges)


def test_summary_statistics_by_hand():
    frame = pd.DataFrame(
        {
            "nodule_id": ["a", "b", "c"],
            "patient_id": ["p", "p", "q"],
            "dice": [0.2, 0.4, 0.9],
            "iou": [0.1, 0.25, 0.8],
            "hd95_mm": [float("nan"), 2.0, 1.0],
            "surface_dice_1mm": [0.0, 0.5, 1.0],
            "predicted_volume_mm3": [0.0, 10.0, 20.0],
            "true_volume_mm3": [5.0, 12.0, 21.0],
            "diameter_mm": [5.0, 7.0, 8.0],
            "n_readers": [3, 4, 4],
            "size_bucket": ["<6 mm", "6-10 mm", "6-10 mm"],
        }
    )
    summary = evaluation.summarise({"unet": frame}).set_index("size_bucket")

    def approx(value):
        return pytest.approx(value, abs=1e-6)  # the summary is rounded to 6 decimals

    assert list(summary.index) == ["all", "<6 mm", "6-10 mm", "10-20 mm", ">=20 mm"]
    assert list(summary["n_nodules"]) == [3, 1, 2, 0, 0]
    assert list(summary["n_empty_predictions"]) == [1, 1, 0, 0, 0]
    everything = summary.loc["all"]
    assert everything["dice_mean"] == approx(0.5)
    assert everything["dice_median"] == approx(0.4)
    assert everything["dice_std"] == approx(math.sqrt((0.09 + 0.01 + 0.16) / 2))
    assert everything["hd95_mm_mean"] == approx(1.5)  # the undefined one left out
    middle = summary.loc["6-10 mm"]
    assert middle["dice_mean"] == approx(0.65)
    assert middle["dice_std"] == approx(math.sqrt(2 * 0.25**2))
    assert math.isnan(summary.loc["<6 mm", "dice_std"])  # one nodule: no spread
    assert math.isnan(summary.loc[">=20 mm", "dice_mean"])


def test_evaluate_runs_the_checkpoint_on_the_validation_crops(trained, tmp_path):
    from lungseg.inference.model import load_model, predict

    directory, arrays = trained
    argv = ["evaluate", "--checkpoint", str(directory / "model" / "best.pt"),
            "--crops", str(directory / "crops.h5"), "--crops-table", str(directory / "crops.csv"),
            "--split", str(directory / "split.csv"), "--device", "cpu"]  # fmt: skip
    outputs = []
    for run in ("first", "second"):
        out, predictions = tmp_path / run / "evaluation.csv", tmp_path / run / "predictions.h5"
        assert main([*argv, "--evaluation", str(out), "--predictions", str(predictions)]) == 0
        outputs.append((out, predictions))
    frame = pd.read_csv(outputs[0][0])
    assert list(frame.columns) == evaluation.EVALUATION_COLUMNS
    assert list(frame["nodule_id"]) == VAL  # validation crops only, in crops.csv order
    for metric in ("dice", "iou", "surface_dice_1mm"):
        assert frame[metric].between(0, 1).all(), metric
    assert outputs[0][0].read_bytes() == outputs[1][0].read_bytes()  # deterministic

    ids, probabilities, threshold = evaluation.read_predictions(outputs[0][1])
    assert ids == VAL and threshold == EVALUATION.threshold
    model, settings = load_model(directory / "model" / "best.pt")
    rows = [i for i, c in enumerate(CROPS) if c[4] == "val"]
    expected = predict(model, arrays["image"][rows], settings, EVALUATION.batch_size)
    np.testing.assert_allclose(probabilities, expected, atol=1e-3)  # stored as float16
    rescored = evaluation.score_predictions(
        expected, arrays["mask"][rows], arrays["other"][rows], val_table(directory), threshold
    )
    np.testing.assert_allclose(frame["dice"], rescored["dice"], atol=1e-6)


def test_bad_inputs_name_the_file(trained, tmp_path):
    directory, _ = trained
    table = pd.read_csv(directory / "crops.csv").drop(columns=["spacing_x"])
    table.to_csv(tmp_path / "crops.csv", index=False)
    with pytest.raises(ValueError, match=r"crops.csv: missing column\(s\) \['spacing_x'\]"):
        evaluation.read_validation_crops(directory / "crops.h5", tmp_path / "crops.csv",
                                         directory / "split.csv")  # fmt: skip
    with h5py.File(directory / "crops.h5") as source, h5py.File(tmp_path / "c.h5", "w") as file:
        file["image"], file["mask"] = source["image"][()], source["mask"][()]
    with pytest.raises(ValueError, match=r"c.h5: no dataset 'other'"):
        evaluation.read_validation_crops(tmp_path / "c.h5", directory / "crops.csv",
                                         directory / "split.csv")  # fmt: skip
    with pytest.raises(ValueError, match="threshold must lie in"):
        empty = np.zeros((1, 2, 2, 2))
        evaluation.score_predictions(empty, empty, empty, val_table(directory)[:1], 1.0)


SNAKEFILE = """
configfile: "config.yaml"
report: "report/workflow.rst"
include: "rules/common.smk"
include: "rules/evaluate.smk"
include: "rules/plots.smk"
"""


def snakemake(workdir: Path, *options: str) -> subprocess.CompletedProcess:
    """Snakemake on the evaluation and plot targets of the workflow in ``workdir``."""
    # the figures of plots_all (which also asks for every volume: not built by this copy)
    figures = [f"results/plots/{kind}_tiny.png" for kind in ("dice", "loss", "examples")]
    targets = [*figures, "results/plots/dice_comparison.png", "results/evaluation.csv"]
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(workdir),
               "--snakefile", str(workdir / "Snakefile"), *options, "--", *targets]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


@pytest.mark.slow
def test_snakemake_evaluates_plots_and_reports(trained, tmp_path):
    """Rules evaluate, evaluate_summary, plots, plot_examples, plot_comparison and the report on
    a trained model; plots rerun when metrics.csv changes (not when merely touched), and only
    the figures drawn from it."""
    directory, _ = trained
    # The real rule files, without the earlier stages: their outputs are given here as sources.
    updates = {"models": {"tiny": {"arch": "unet"}}, "plots": {"examples": 2}}
    copy_workflow(tmp_path, updates, snakefile=SNAKEFILE)
    (tmp_path / "results" / "crops").mkdir(parents=True)
    for name in ("crops.h5", "crops.csv"):
        shutil.copy(directory / name, tmp_path / "results" / "crops" / name)
    (tmp_path / "results" / "split").mkdir()
    shutil.copy(directory / "split.csv", tmp_path / "results" / "split" / "split.csv")
    shutil.copytree(directory / "model", tmp_path / "results" / "models" / "tiny")

    run = snakemake(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    plots_dir = tmp_path / "results" / "plots"
    assert sorted(p.name for p in plots_dir.iterdir()) == [
        "dice_comparison.png", "dice_tiny.png", "examples_tiny.png", "loss_tiny.png"]  # fmt: skip
    for png in plots_dir.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = pd.read_csv(tmp_path / "results" / "evaluation.csv")
    assert list(summary["model"].unique()) == ["tiny"]
    assert summary.loc[summary["size_bucket"] == "all", "n_nodules"].item() == len(VAL)

    metrics = tmp_path / "results" / "models" / "tiny" / "metrics.csv"
    os.utime(metrics)  # newer, same content (Snakemake >= 9.18 compares checksums): no rerun
    assert "Nothing to be done" in snakemake(tmp_path, "--dry-run").stdout
    changed = pd.read_csv(metrics)
    changed.loc[len(changed) - 1, "val_dice"] = 0.5
    changed.to_csv(metrics, index=False)  # new metrics: curves and comparison, nothing else
    dry = snakemake(tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    words = {line.split()[0] for line in dry.stdout.splitlines() if line.strip()}
    assert {"plots", "plot_comparison"} <= words, dry.stdout[-2000:]
    assert not {"plot_examples", "evaluate", "evaluate_summary"} & words, dry.stdout[-2000:]

    report = snakemake(tmp_path, "--report", "results/report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "results" / "report.html").read_text(errors="replace")
    for name in ("dice_tiny.png", "loss_tiny.png", "examples_tiny.png", "dice_comparison.png",
                 "evaluation.csv"):  # fmt: skip
        assert name in html, name
