"""Overview figure of the crops: mid-slices through each crop with its nodule outlined.

A grid of axial slices (the crop's middle z) in the lung window, the crop's nodule outlined in
red and other nodules in the crop in yellow; each panel names the nodule, its diameter and, when
a split table is given, its subset. At most ``max_crops`` crops are shown, spread evenly over the
diameter range so that small and large nodules both appear.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import h5py  # noqa: E402
import hdf5plugin  # noqa: E402, F401 (registers the Blosc filters crops.h5 is written with)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lungseg.core.atomic import atomic_path  # noqa: E402
from lungseg.core.style import HU_WINDOW  # noqa: E402
from lungseg.dataset.settings import CropsOverviewSettings  # noqa: E402

logger = logging.getLogger(__name__)

PANEL_INCHES = 1.6
DPI = 150
NODULE_COLOUR = "tab:red"
OTHER_COLOUR = "gold"


def pick_rows(diameters: np.ndarray, max_crops: int) -> np.ndarray:
    """Up to ``max_crops`` row indices spread evenly over the sorted diameters, in that order."""
    order = np.argsort(diameters, kind="stable")
    if len(order) <= max_crops:
        return order
    positions = np.linspace(0, len(order) - 1, max_crops).round().astype(int)
    return order[positions]


def crops_overview_figure(
    crops_h5: str | Path,
    crops_csv: str | Path,
    split_csv: str | Path | None = None,
    max_crops: int = 40,
) -> Figure:
    """The overview grid of ``crops_h5`` (rows of ``crops_csv``; subsets from ``split_csv``)."""
    table = pd.read_csv(crops_csv)
    for column in ("nodule_id", "diameter_mm"):
        if column not in table.columns:
            raise ValueError(f"{crops_csv}: missing column {column!r}")
    subset_of = {}
    if split_csv is not None:
        split = pd.read_csv(split_csv)
        subset_of = dict(zip(split["nodule_id"], split["subset"], strict=True))
    rows = pick_rows(table["diameter_mm"].to_numpy(dtype=float), max_crops)
    with h5py.File(crops_h5, "r") as file:
        if file["image"].shape[0] != len(table):
            raise ValueError(
                f"{crops_h5}: {file['image'].shape[0]} crops, {crops_csv}: {len(table)}"
            )
        mid = file["image"].shape[1] // 2
        # h5py needs increasing indices; read in row order, then reorder.
        sorted_rows = np.sort(rows)
        slices = {
            name: dict(zip(sorted_rows, file[name][sorted_rows, mid], strict=True))
            for name in ("image", "mask", "other")
        }
    columns = min(8, max(1, len(rows)))
    n_rows = max(1, math.ceil(len(rows) / columns))
    figure = Figure(
        figsize=(columns * PANEL_INCHES, n_rows * PANEL_INCHES + 0.5), dpi=DPI, layout="constrained"
    )
    figure.suptitle(
        f"{len(rows)} of {len(table)} crops (middle axial slice, sorted by diameter): "
        "nodule red, other nodules yellow",
        fontsize=9,
    )
    axes_grid = figure.subplots(n_rows, columns, squeeze=False)
    for axes in axes_grid.ravel():
        axes.set_axis_off()
    for axes, row in zip(axes_grid.ravel(), rows, strict=False):
        record = table.iloc[row]
        axes.imshow(slices["image"][row], cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1])
        for name, colour in (("mask", NODULE_COLOUR), ("other", OTHER_COLOUR)):
            if slices[name][row].any():
                axes.contour(slices[name][row], levels=[0.5], colors=colour, linewidths=0.8)
        subset = subset_of.get(record["nodule_id"])
        label = f"{record['nodule_id']}\n{record['diameter_mm']:.1f} mm"
        axes.set_title(label + (f", {subset}" if subset else ""), fontsize=6)
    return figure


def save_crops_overview(
    crops_h5: str | Path,
    crops_csv: str | Path,
    out_png: str | Path,
    split_csv: str | Path | None = None,
    max_crops: int = 40,
) -> None:
    """Render :func:`crops_overview_figure` and write it atomically as PNG."""
    figure = crops_overview_figure(crops_h5, crops_csv, split_csv, max_crops)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png")
    logger.info("crops overview -> %s", out_png)


def run_crops_overview(
    *,
    crops: str,
    table: str,
    split: str | None = None,
    figure: str,
    settings: CropsOverviewSettings,
) -> None:
    """Overview figure of the crops (mid-slices; the subset in each title when ``split``)."""
    save_crops_overview(crops, table, figure, split, settings.overview_max)
