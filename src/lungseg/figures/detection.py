"""Detection figures: the FROC of every detector, and validation slabs with candidates circled.

``froc.png``: sensitivity against false positives per scan (log axis 1/8..8, LUNA16's range),
one line per detector with its CPM and 95 % interval in the legend, the bootstrap band shaded,
the seven operating points marked. ``detections_{detector}.png``: per validation nodule (up to
``max_panels``) an axial slab (maximum intensity over +-1 voxel) of the detection canvas around
it; circles of the reference nodules (green: hit by a candidate above the operating threshold,
orange dashed: missed) and of the candidates above the threshold (cyan: hits, red: false
positives), circle size = diameter.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

from lungseg.core.atomic import atomic_path  # noqa: E402
from lungseg.detection.scans import read_scan_table  # noqa: E402
from lungseg.evaluation.detection import reference_findings  # noqa: E402
from lungseg.evaluation.froc import OPERATING_POINTS  # noqa: E402
from lungseg.io.hdf5 import read_volume  # noqa: E402

DPI = 150
HU_WINDOW = (-1000.0, 400.0)


def save(figure: Figure, path: str) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)


def froc_figure(frocs: list[str], bootstraps: list[str], summaries: list[str]) -> Figure:
    figure = Figure(figsize=(5.0, 3.6))
    ax = figure.add_subplot()
    colours = matplotlib.colormaps["tab10"]
    for i, (froc_path, band_path, summary_path) in enumerate(
        zip(frocs, bootstraps, summaries, strict=True)
    ):
        curve, band = pd.read_csv(froc_path), pd.read_csv(band_path)
        row = pd.read_csv(summary_path).iloc[0]
        colour = colours(i % 10)
        label = (
            f"{row['detector']}: CPM {row['cpm']:.3f} ({row['cpm_low']:.3f}-{row['cpm_high']:.3f})"
        )
        ax.plot(curve["fps_per_scan"], curve["sensitivity"], color=colour, lw=1.8, label=label)
        ax.fill_between(
            band["fps_per_scan"],
            band["sensitivity_low"],
            band["sensitivity_high"],
            color=colour,
            alpha=0.15,
            lw=0,
        )
        points = np.interp(OPERATING_POINTS, curve["fps_per_scan"], curve["sensitivity"])
        ax.plot(OPERATING_POINTS, points, "o", color=colour, ms=3.5)
    ax.set_xscale("log", base=2)
    ax.set_xlim(OPERATING_POINTS[0], OPERATING_POINTS[-1])
    ax.set_xticks(OPERATING_POINTS, ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC on the validation scans (LUNA16 rules)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    return figure


def plot_froc(
    *, frocs: list[str], bootstraps: list[str], summaries: list[str], figure: str
) -> None:
    """results/plots/froc.png from every detector's froc.csv, bootstrap band and summary."""
    save(froc_figure(frocs, bootstraps, summaries), figure)


def _canvas_points(source_zyx: np.ndarray, attrs: dict) -> np.ndarray:
    offset, step = np.asarray(attrs["offset"], dtype=float), np.asarray(attrs["step"], dtype=float)
    return (np.asarray(source_zyx, dtype=float) - offset) / step


def detections_figure(
    candidates: pd.DataFrame,
    scan_table: pd.DataFrame,
    nodules_csv: str,
    threshold: float | None,
    max_panels: int = 8,
) -> Figure:
    val = scan_table[scan_table["subset"] == "val"]
    reference = reference_findings(nodules_csv, val)
    reference = reference[reference["relevant"]]
    shown = candidates if threshold is None else candidates[candidates["probability"] >= threshold]
    nodules = pd.read_csv(nodules_csv).set_index("nodule_id")
    panels = reference.head(max_panels)
    cols = min(4, max(1, len(panels)))
    rows = max(1, int(np.ceil(len(panels) / cols)))
    figure = Figure(figsize=(2.2 * cols, 2.4 * rows))
    volumes: dict[str, tuple[np.ndarray, dict]] = {}  # path -> canvas, its attrs (the geometry)
    for k, (_, ref) in enumerate(panels.iterrows()):
        ax = figure.add_subplot(rows, cols, k + 1)
        scan = val[val["series_uid"] == ref["seriesuid"]].iloc[0]
        if scan["path"] not in volumes:
            image, _, vattrs = read_volume(scan["path"])
            volumes[scan["path"]] = (image, vattrs)
        image, attrs = volumes[scan["path"]]
        pixel_mm = float(attrs["spacing"][1])
        nodule = nodules.loc[ref["nodule_id"]]
        centre = _canvas_points(
            [[nodule["centroid_z"], nodule["centroid_y"], nodule["centroid_x"]]], attrs
        )[0]
        z = int(np.clip(round(centre[0]), 0, image.shape[0] - 1))
        slab = image[max(z - 1, 0) : z + 2].max(axis=0)
        ax.imshow(slab, cmap="gray", vmin=HU_WINDOW[0], vmax=HU_WINDOW[1], origin="upper")
        own = shown[shown["seriesuid"] == ref["seriesuid"]]
        points = _canvas_points(own[["center_z", "center_y", "center_x"]].to_numpy(), attrs)
        world = own[["coordX", "coordY", "coordZ"]].to_numpy()
        refs = reference[reference["seriesuid"] == ref["seriesuid"]]
        ref_world = refs[["coordX", "coordY", "coordZ"]].to_numpy()
        radii = refs["diameter_mm"].to_numpy() / 2
        dist = np.sqrt(((world[:, None, :] - ref_world[None]) ** 2).sum(-1)) if len(own) else None
        hit_by = (dist < radii[None]).any(axis=0) if dist is not None else np.zeros(len(refs), bool)
        is_hit = (dist < radii[None]).any(axis=1) if dist is not None else np.zeros(0, bool)
        for point, hit, diameter in zip(points, is_hit, own["diameter_mm"], strict=True):
            if abs(point[0] - z) <= 2:
                ax.add_patch(
                    Circle(
                        (point[2], point[1]),
                        max(diameter / 2 / pixel_mm, 2) + 2,
                        fill=False,
                        color="tab:cyan" if hit else "tab:red",
                        lw=1.0,
                    )
                )
        this = refs["nodule_id"].tolist().index(ref["nodule_id"])
        ax.add_patch(
            Circle(
                (centre[2], centre[1]),
                max(ref["diameter_mm"] / 2 / pixel_mm, 2) + 4,
                fill=False,
                color="tab:green" if hit_by[this] else "tab:orange",
                ls="-" if hit_by[this] else "--",
                lw=1.2,
            )
        )
        outcome = "hit" if hit_by[this] else "missed"
        ax.set_title(f"{ref['nodule_id']}\n{ref['diameter_mm']:.0f} mm, {outcome}", fontsize=6)
        ax.set_axis_off()
    if panels.empty:
        figure.text(0.5, 0.5, "no reference nodule in the validation scans", ha="center")
    figure.suptitle(
        "green hit / orange missed nodule; cyan hit / red false-positive candidate"
        + ("" if threshold is None else f" (p >= {threshold:.2f})"),
        fontsize=7,
    )
    figure.tight_layout()
    return figure


def plot_detections(
    *,
    candidates: str,
    scans: str,
    nodules: str,
    operating_point: str,
    volumes: list[str],
    figure: str,
) -> None:
    """results/plots/detections_{detector}.png (module docstring); ``volumes``: the canvases."""
    del volumes  # read through the scan table's paths; an input so that the figure follows them
    threshold = json.loads(Path(operating_point).read_text())["threshold"]
    found = pd.read_csv(candidates)
    save(detections_figure(found, read_scan_table(scans), nodules, threshold), figure)
