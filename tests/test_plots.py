"""Figures: labels, titles, plotted data and pixel size via the Figure objects; example choice."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungseg.cli import main
from lungseg.core.style import DPI
from lungseg.evaluation.evaluate import write_predictions
from lungseg.figures import curves as plots


@pytest.fixture
def metrics():
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4, 5],
            "train_loss": [1.2, 0.9, 0.7, 0.6, 0.5],
            "train_dice": [0.1, 0.4, 0.6, 0.7, 0.8],
            "val_loss": [1.3, 1.0, 0.8, 0.85, 0.9],
            "val_dice": [0.05, 0.5, 0.8, 0.8, 0.7],  # best 0.8 first reached at epoch 3
            "seconds": [1.0] * 5,
            "peak_memory_mb": [100.0] * 5,
        }
    )


def legend_texts(axes):
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_best_epoch_is_the_first_maximum(metrics):
    assert plots.best_epoch(metrics) == (3, 0.8)


def test_dice_curve_figure(metrics):
    figure = plots.dice_curve_figure(metrics, "iunet")
    (axes,) = figure.axes
    assert axes.get_title() == "iunet: Dice per epoch"
    assert axes.get_xlabel() == "Epoch"
    assert axes.get_ylabel() == "Dice"
    assert axes.get_ylim() == (0.0, 1.0)
    assert legend_texts(axes) == ["training", "validation", "best: 0.800 (epoch 3)"]
    lines = {line.get_label(): line for line in axes.get_lines()}
    np.testing.assert_array_equal(lines["training"].get_ydata(), metrics["train_dice"])
    np.testing.assert_array_equal(lines["validation"].get_ydata(), metrics["val_dice"])
    np.testing.assert_array_equal(lines["best: 0.800 (epoch 3)"].get_xdata(), [3])


def test_loss_curve_figure(metrics):
    figure = plots.loss_curve_figure(metrics, "unet")
    (axes,) = figure.axes
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
        "unet: loss per epoch",
        "Epoch",
        "Loss",
    )
    assert legend_texts(axes) == ["training", "validation", "best validation Dice"]


def test_dice_comparison_figure_has_one_curve_per_model(metrics):
    other = metrics.assign(val_dice=metrics["val_dice"] / 2)
    figure = plots.dice_comparison_figure({"unet": metrics, "iunet": other})
    (axes,) = figure.axes
    assert axes.get_ylabel() == "Validation Dice"
    assert axes.get_xlabel() == "Epoch"
    assert legend_texts(axes) == ["unet (0.800)", "iunet (0.400)"]
    assert axes.get_legend().get_title().get_text() == "model (best)"


def test_save_figure_writes_a_png_of_the_figure_size(metrics, tmp_path):
    out = tmp_path / "plots" / "dice.png"
    plots.save_figure(plots.dice_curve_figure(metrics, "unet"), out)
    with Image.open(out) as image:
        assert image.format == "PNG"
        width, height = plots.CURVE_SIZE
        assert image.size == (round(width * DPI), round(height * DPI))
        assert np.asarray(image.convert("L")).std() > 10  # something is drawn
    assert [p.name for p in out.parent.iterdir()] == ["dice.png"]  # no temporary left over


def test_read_metrics_names_file_and_missing_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [1], "train_loss": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"metrics.csv: missing column\(s\) \['train_dice'"):
        plots.read_metrics(path)


# diameters, count, expected choice (smallest to largest, evenly spaced, ties by id)
EXAMPLE_CASES = [
    ({"a": 5.0, "b": 3.0, "c": 9.0}, 5, ["b", "a", "c"]),
    ({"a": 5.0, "b": 3.0, "c": 9.0}, 2, ["b", "c"]),
    ({f"n{i}": float(i) for i in range(9)}, 3, ["n0", "n4", "n8"]),
    ({"x": 4.0, "y": 4.0, "z": 1.0}, 1, ["z"]),
]


@pytest.mark.parametrize("diameters, count, expected", EXAMPLE_CASES)
def test_choose_examples(diameters, count, expected):
    assert plots.choose_examples(diameters, count) == expected


def test_mid_slice_is_the_nodule_centroid():
    mask = np.zeros((9, 4, 4), dtype=np.uint8)
    mask[2:5, 1, 1] = 1  # slices 2, 3, 4 -> 3
    assert plots._mid_slice(mask) == 3
    mask[6, :, :] = 1  # 16 voxels at slice 6 pull the centroid there
    assert plots._mid_slice(mask) == 6
    assert plots._mid_slice(np.zeros((9, 4, 4))) == 4


@pytest.fixture
def crops(tmp_path):
    """Four 8^3 crops with cubes of growing size; crop 1 has another nodule in a corner."""
    n, size = 4, 8
    images = np.full((n, size, size, size), -900, dtype=np.int16)
    masks = np.zeros(images.shape, dtype=np.uint8)
    other = np.zeros(images.shape, dtype=np.uint8)
    for i in range(n):
        masks[i, 3 : 5 + i % 3, 3 : 5 + i, 3 : 5 + i] = 1
    other[1, 0, :2, :2] = 1
    images[masks > 0] = 50
    table = pd.DataFrame(
        {
            "nodule_id": [f"P{i}_n01" for i in range(n)],
            "patient_id": [f"P{i}" for i in range(n)],
            "spacing_z": 2.5,
            "spacing_y": 0.8,
            "spacing_x": 0.8,
            "diameter_mm": [12.0, 4.0, 8.0, 20.0],
        }
    )
    with h5py.File(tmp_path / "crops.h5", "w") as file:
        file["image"], file["mask"], file["other"] = images, masks, other
    table.to_csv(tmp_path / "crops.csv", index=False)
    return tmp_path, images, masks, other, table


def write_model_outputs(directory, name, probabilities, table):
    write_predictions(directory / f"{name}.h5", list(table["nodule_id"]), probabilities, 0.5)
    evaluation = table[["nodule_id"]].assign(dice=np.linspace(0.1, 0.4, len(table)))
    evaluation.to_csv(directory / f"{name}.csv", index=False)


def test_examples_show_the_same_nodules_for_every_model(crops):
    directory, images, masks, other, table = crops
    write_model_outputs(directory, "perfect", (masks | other).astype(np.float32), table)
    write_model_outputs(directory, "empty", np.zeros(masks.shape, np.float32), table)
    shown = {}
    for model in ("perfect", "empty"):
        shown[model] = plots.load_examples(
            directory / f"{model}.h5",
            directory / "crops.h5",
            directory / "crops.csv",
            directory / f"{model}.csv",
            count=3,
        )
    perfect = shown["perfect"]
    # 3 of 4 spread over the diameters, smallest first: 4 mm (P1), 12 mm (P0), 20 mm (P3)
    assert perfect["captions"] == ["P1_n01\n4.0 mm", "P0_n01\n12.0 mm", "P3_n01\n20.0 mm"]
    assert shown["empty"]["captions"] == perfect["captions"]
    np.testing.assert_array_equal(perfect["images_hu"], images[[1, 0, 3]])
    np.testing.assert_array_equal(perfect["masks"], masks[[1, 0, 3]])
    # the other nodule in crop 1 is not part of the prediction
    np.testing.assert_array_equal(perfect["predicted"], masks[[1, 0, 3]] > 0)
    assert not shown["empty"]["predicted"].any()
    assert perfect["dice_values"] == pytest.approx([0.2, 0.1, 0.4])
    assert perfect["pixel_aspect"] == [1.0, 1.0, 1.0]

    figure = plots.examples_figure(**perfect, model="perfect")
    grid = np.array(figure.axes).reshape(3, 3)
    assert [axes.get_ylabel() for axes in grid[:, 0]] == ["Image", "Annotation", "Prediction"]
    assert [axes.get_title() for axes in grid[0]] == perfect["captions"]
    assert [axes.get_title() for axes in grid[2]] == ["Dice 0.20", "Dice 0.10", "Dice 0.40"]
    assert figure.get_suptitle() == "perfect: validation examples, axial"
    # overlays: annotation and prediction rows carry contours, the image row none
    assert not grid[0, 0].collections and grid[1, 0].collections and grid[2, 0].collections


def test_examples_reject_predictions_of_unknown_nodules(crops):
    directory, _, masks, _, table = crops
    write_model_outputs(directory, "m", masks.astype(np.float32), table)
    write_predictions(directory / "m.h5", ["nobody", *table["nodule_id"][1:]], masks, 0.5)
    with pytest.raises(ValueError, match=r"m.h5: nodule\(s\) \['nobody'\] not in"):
        plots.load_examples(
            directory / "m.h5",
            directory / "crops.h5",
            directory / "crops.csv",
            directory / "m.csv",
            2,
        )


def test_cli_writes_every_figure(crops, metrics):
    directory, _, masks, _, table = crops
    write_model_outputs(directory, "m", masks.astype(np.float32), table)
    metrics.to_csv(directory / "metrics.csv", index=False)
    out = directory / "plots"
    curves = ["plots", "--model", "m", "--metrics", str(directory / "metrics.csv"),
              "--dice", str(out / "dice_m.png"), "--loss", str(out / "loss_m.png")]  # fmt: skip
    assert main(curves) == 0
    examples = ["plot-examples", "--model", "m", "--predictions", str(directory / "m.h5"),
                "--crops", str(directory / "crops.h5"),
                "--crops_table", str(directory / "crops.csv"),
                "--evaluation", str(directory / "m.csv"), "--examples", "2",
                "--figure", str(out / "examples_m.png")]  # fmt: skip
    assert main(examples) == 0
    assert main(["plot-comparison", "--models", "m", "n", "--metrics",
                 str(directory / "metrics.csv"), str(directory / "metrics.csv"),
                 "--figure", str(out / "dice_comparison.png")]) == 0  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert names == ["dice_comparison.png", "dice_m.png", "examples_m.png", "loss_m.png"]
    with Image.open(out / "examples_m.png") as image:
        assert image.size == (round((1.8 * 2 + 0.6) * DPI), round(6.0 * DPI))
