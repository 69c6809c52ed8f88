"""Figures of a run: Dice and loss curves per model, validation Dice of all models, examples.

Each ``*_figure`` function builds and returns a matplotlib :class:`~matplotlib.figure.Figure`
(testable: labels, titles, data); :func:`save_figure` writes it atomically as PNG at a fixed
pixel size (no tight bounding box, so the size is ``figsize x dpi``). Sizes suit a journal
column (about 4.5 x 3.2 inches) with fonts readable when printed at that size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402, F401 (registers the Blosc filters crops.h5 is written with)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lungseg.core.atomic import atomic_path  # noqa: E402
from lungseg.core.style import ANNOTATION_COLOUR, DPI, HU_WINDOW, PREDICTION_COLOUR  # noqa: E402
from lungseg.figures.settings import ExamplesSettings  # noqa: E402

logger = logging.getLogger(__name__)

METRICS_COLUMNS = ["epoch", "train_loss", "train_dice", "val_loss", "val_dice"]
CURVE_SIZE = (4.5, 3.2)  # inches
#: Display window of the example crops (HU): the lung window of the training intensities.


def read_metrics(path: str | Path) -> pd.DataFrame:
    """A metrics.csv of rule train, checked for the columns the figures use."""
    frame = pd.read_csv(path)
    missing = [c for c in METRICS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    if frame.empty:
        raise ValueError(f"{path}: no epochs")
    return frame.sort_values("epoch").reset_index(drop=True)


def best_epoch(metrics: pd.DataFrame) -> tuple[int, float]:
    """Epoch of the highest validation Dice (the first, on ties; the one of best.pt) and Dice."""
    row = metrics.loc[metrics["val_dice"].idxmax()]
    return int(row["epoch"]), float(row["val_dice"])


def _curve_axes(title: str, ylabel: str) -> tuple[Figure, object]:
    figure = Figure(figsize=CURVE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.set_xlabel("Epoch")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, axes


def dice_curve_figure(metrics: pd.DataFrame, model: str) -> Figure:
    """Training and validation Dice per epoch, the best validation epoch marked."""
    figure, axes = _curve_axes(f"{model}: Dice per epoch", "Dice")
    axes.plot(metrics["epoch"], metrics["train_dice"], "-o", ms=3, label="training")
    axes.plot(metrics["epoch"], metrics["val_dice"], "-s", ms=3, label="validation")
    epoch, value = best_epoch(metrics)
    axes.axvline(epoch, color="grey", ls="--", lw=1)
    axes.plot(
        [epoch], [value], "*", color="black", ms=10, label=f"best: {value:.3f} (epoch {epoch})"
    )
    axes.set_ylim(0.0, 1.0)
    axes.legend(loc="best", fontsize="small")
    return figure


def loss_curve_figure(metrics: pd.DataFrame, model: str) -> Figure:
    """Training and validation loss per epoch, the best validation-Dice epoch marked."""
    figure, axes = _curve_axes(f"{model}: loss per epoch", "Loss")
    axes.plot(metrics["epoch"], metrics["train_loss"], "-o", ms=3, label="training")
    axes.plot(metrics["epoch"], metrics["val_loss"], "-s", ms=3, label="validation")
    axes.axvline(best_epoch(metrics)[0], color="grey", ls="--", lw=1, label="best validation Dice")
    axes.legend(loc="upper right", fontsize="small")
    return figure


def dice_comparison_figure(metrics_by_model: Mapping[str, pd.DataFrame]) -> Figure:
    """Validation Dice per epoch of every model on one set of axes."""
    figure, axes = _curve_axes("Validation Dice of all models", "Validation Dice")
    for model, metrics in metrics_by_model.items():
        epoch, value = best_epoch(metrics)
        (line,) = axes.plot(
            metrics["epoch"], metrics["val_dice"], "-", label=f"{model} ({value:.3f})"
        )
        axes.plot([epoch], [value], "*", color=line.get_color(), ms=9)
    axes.set_ylim(0.0, 1.0)
    axes.legend(loc="best", fontsize="small", title="model (best)")
    return figure


def choose_examples(diameters_mm: Mapping[str, float], count: int) -> list[str]:
    """``count`` nodule ids spread evenly over the diameter range (smallest to largest).

    Depends on the validation nodules alone, so every model shows the same nodules.
    """
    ordered = sorted(diameters_mm, key=lambda nodule: (diameters_mm[nodule], nodule))
    if count >= len(ordered):
        return ordered
    positions = np.linspace(0, len(ordered) - 1, count).round().astype(int)
    return [ordered[i] for i in positions]


def _mid_slice(mask: np.ndarray) -> int:
    """Axial slice through the centre of the nodule (the mask's centroid; the middle if empty)."""
    z = np.flatnonzero(mask.any(axis=(1, 2)))
    if z.size == 0:
        return mask.shape[0] // 2
    weights = mask.sum(axis=(1, 2))[z]
    return int(round(float(np.average(z, weights=weights))))


def examples_figure(
    images_hu: np.ndarray,
    masks: np.ndarray,
    predicted: np.ndarray,
    captions: Sequence[str],
    dice_values: Sequence[float],
    pixel_aspect: Sequence[float],
    model: str,
) -> Figure:
    """Rows image / annotation / prediction, one column per crop, axial slice through the nodule.

    ``predicted`` is the binary prediction; ``pixel_aspect`` is spacing_y / spacing_x per crop.
    """
    count = len(images_hu)
    figure = Figure(figsize=(1.8 * count + 0.6, 6.0), dpi=DPI, layout="constrained")
    grid = figure.subplots(3, count, squeeze=False)
    figure.suptitle(f"{model}: validation examples, axial", fontsize="medium")
    row_names = ["Image", "Annotation", "Prediction"]
    for column in range(count):
        z = _mid_slice(masks[column])
        image = images_hu[column, z]
        overlays = [None, masks[column, z], predicted[column, z]]
        colours = [None, ANNOTATION_COLOUR, PREDICTION_COLOUR]
        for row in range(3):
            axes = grid[row, column]
            axes.imshow(image, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1],
                        aspect=pixel_aspect[column], interpolation="nearest")  # fmt: skip
            if overlays[row] is not None and overlays[row].any():
                axes.contourf(
                    overlays[row] > 0, levels=[0.5, 1.5], colors=[colours[row]], alpha=0.4
                )
                axes.contour(overlays[row] > 0, levels=[0.5], colors=[colours[row]], linewidths=1)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(row_names[row])
        grid[0, column].set_title(captions[column], fontsize="small")
        grid[2, column].set_title(f"Dice {dice_values[column]:.2f}", fontsize="small")
    return figure


def save_figure(figure: Figure, path: str | Path) -> None:
    """Write ``figure`` as PNG to ``path`` atomically."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
    logger.info("wrote %s", path)


def load_examples(
    predictions_h5: str | Path,
    crops_h5: str | Path,
    crops_csv: str | Path,
    evaluation_csv: str | Path,
    count: int,
) -> dict:
    """Arrays and captions of the example nodules of one model (see :func:`examples_figure`)."""
    from lungseg.evaluation.evaluate import read_predictions

    nodule_ids, probabilities, threshold = read_predictions(predictions_h5)
    crops = pd.read_csv(crops_csv)
    evaluation = pd.read_csv(evaluation_csv).set_index("nodule_id")
    row_of = {nodule: i for i, nodule in enumerate(crops["nodule_id"])}
    unknown = [n for n in nodule_ids if n not in row_of or n not in evaluation.index]
    if unknown:
        raise ValueError(
            f"{predictions_h5}: nodule(s) {unknown[:3]} not in {crops_csv} / evaluation"
        )
    chosen = choose_examples(
        {n: float(crops["diameter_mm"].iloc[row_of[n]]) for n in nodule_ids}, count
    )  # smallest to largest
    rows = [row_of[n] for n in chosen]
    order = np.argsort(rows)  # h5py reads increasing indices only
    with h5py.File(crops_h5, "r") as file:
        read = {name: file[name][sorted(rows)] for name in ("image", "mask", "other")}
    images, masks, other = (read[name][np.argsort(order)] for name in ("image", "mask", "other"))
    index_of = {n: i for i, n in enumerate(nodule_ids)}
    predicted = np.stack([probabilities[index_of[n]] >= threshold for n in chosen]) & (other == 0)
    table = crops.iloc[rows]
    return {
        "images_hu": images,
        "masks": masks,
        "predicted": predicted,
        "captions": [f"{n}\n{d:.1f} mm" for n, d in zip(chosen, table["diameter_mm"], strict=True)],
        "dice_values": [float(evaluation.loc[n, "dice"]) for n in chosen],
        "pixel_aspect": list(table["spacing_y"] / table["spacing_x"]),
    }


def plot_curves(
    model: str, metrics_csv: str | Path, dice_png: str | Path, loss_png: str | Path
) -> None:
    """One model's Dice and loss curves (inputs: metrics.csv alone)."""
    metrics = read_metrics(metrics_csv)
    save_figure(dice_curve_figure(metrics, model), dice_png)
    save_figure(loss_curve_figure(metrics, model), loss_png)


def plot_examples(
    model: str,
    predictions_h5: str | Path,
    crops_h5: str | Path,
    crops_csv: str | Path,
    evaluation_csv: str | Path,
    out_png: str | Path,
    count: int = 4,
) -> None:
    """One model's validation examples."""
    if count < 1:
        raise ValueError(f"the examples figure needs >= 1 nodule, got {count}")
    arrays = load_examples(predictions_h5, crops_h5, crops_csv, evaluation_csv, count)
    save_figure(examples_figure(**arrays, model=model), out_png)


def plot_comparison(
    models: Sequence[str], metrics_csvs: Sequence[str | Path], out_png: str | Path
) -> None:
    """Validation Dice of all models in one figure."""
    if len(models) != len(metrics_csvs):
        raise ValueError(f"{len(models)} model names but {len(metrics_csvs)} metrics files")
    metrics = {m: read_metrics(p) for m, p in zip(models, metrics_csvs, strict=True)}
    save_figure(dice_comparison_figure(metrics), out_png)


def run_plots(*, metrics: str, model: str, dice: str, loss: str) -> None:
    """Dice (``dice``) and loss (``loss``) curves of ``model`` from its ``metrics`` CSV."""
    plot_curves(model, metrics, dice, loss)


def run_plot_examples(
    *,
    predictions: str,
    evaluation: str,
    crops: str,
    crops_table: str,
    model: str,
    figure: str,
    settings: ExamplesSettings,
) -> None:
    """Validation examples of ``model`` (smallest to largest nodule) -> ``figure``."""
    plot_examples(model, predictions, crops, crops_table, evaluation, figure, settings.examples)


def run_plot_comparison(*, metrics: list[str], models: list[str], figure: str) -> None:
    """Validation Dice per epoch of all ``models`` (their ``metrics`` CSVs) -> ``figure``."""
    plot_comparison(models, metrics, figure)
