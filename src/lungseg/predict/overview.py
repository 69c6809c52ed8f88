"""overview.png: where the nodules are (coronal MIP, labelled) and an axial slice through each."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_through_file
from lungseg.core.style import ANNOTATION_COLOUR, HU_WINDOW

MAX_PANELS = 12


def plot_overview(
    path: str | Path,
    image: np.ndarray,
    labels: np.ndarray,
    nodules: pd.DataFrame,
    spacing,
    title: str,
) -> None:
    """Coronal maximum-intensity projection with a numbered marker per nodule, axial slices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = nodules.head(MAX_PANELS)
    columns = max(1, min(4, len(shown)))
    rows = math.ceil(len(shown) / columns) if len(shown) else 0
    fig = plt.figure(figsize=(4 + 2.6 * columns, max(4.0, 2.6 * max(rows, 1))))
    grid = fig.add_gridspec(max(rows, 1), columns + 2)
    ax = fig.add_subplot(grid[:, :2])
    mip = image.max(axis=1).astype(np.float32)  # over rows (anterior-posterior): coronal
    ax.imshow(
        mip,
        cmap="gray",
        vmin=HU_WINDOW[0],
        vmax=HU_WINDOW[1],
        origin="lower",  # slice order is ascending along the normal: feet at the bottom (HFS)
        aspect=float(spacing[0]) / float(spacing[2]),
        interpolation="nearest",
    )
    for row in nodules.itertuples():
        ax.plot(row.center_x, row.center_z, "o", mfc="none", mec=ANNOTATION_COLOUR, ms=12, mew=1.5)
        ax.annotate(
            str(row.label),
            (row.center_x, row.center_z),
            xytext=(7, 7),
            textcoords="offset points",
            color=ANNOTATION_COLOUR,
            fontsize=10,
            weight="bold",
        )
    ax.set_title(f"coronal MIP, {len(nodules)} nodule(s)", fontsize=10)
    ax.set_axis_off()
    for i, row in enumerate(shown.itertuples()):
        sub = fig.add_subplot(grid[i // columns, 2 + i % columns])
        z = int(round(row.center_z))
        half = max(24, int(row.diameter_mm / float(spacing[1])))
        y0, x0 = int(row.center_y) - half, int(row.center_x) - half
        y1, x1 = y0 + 2 * half, x0 + 2 * half
        y0c, x0c = max(0, y0), max(0, x0)
        sub.imshow(
            image[z, y0c:y1, x0c:x1],
            cmap="gray",
            vmin=HU_WINDOW[0],
            vmax=HU_WINDOW[1],
            interpolation="nearest",
        )
        inside = labels[z, y0c:y1, x0c:x1] == row.label
        if inside.any():
            sub.contour(inside, levels=[0.5], colors=ANNOTATION_COLOUR, linewidths=1.0)
        sub.set_title(f"{row.label}: {row.diameter_mm:.1f} mm, p={row.probability:.2f}", fontsize=8)
        sub.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_through_file(path, lambda file: fig.savefig(file, format="png", dpi=110))
    plt.close(fig)
