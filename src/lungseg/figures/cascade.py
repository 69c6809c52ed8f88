"""Figures of the cascade evaluation: results/plots/cascade.png and radiomics_agreement.png
(rule ``plot_cascade``, from the tables of rule ``cascade``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lungseg.core.atomic import atomic_path
from lungseg.core.style import DPI
from lungseg.evaluation.cascade_run import ICC_GOOD


def _save(figure: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)


def plot_cascade(table: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """Left: sensitivity and mean Dice per size bucket, cascade vs crop model at the true centre.
    Right: per nodule, cascade Dice against the crop model's (misses on the x axis)."""
    figure = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    left, right = figure.subplots(1, 2)
    rows = summary[summary["nodules"] > 0]
    x = np.arange(len(rows))
    width = 0.27
    left.bar(x - width, rows["sensitivity"], width, label="detected (share)")
    left.bar(x, rows["dice_mean"], width, label="Dice, cascade (misses = 0)")
    left.bar(x + width, rows["crop_dice_mean"], width, label="Dice, crop model at true centre")
    left.set_xticks(
        x,
        [f"{b}\n(n={n})" for b, n in zip(rows["size_bucket"], rows["nodules"], strict=True)],
        fontsize=8,
    )
    left.set_ylim(0, 1.05)
    left.set_title("Cascade by nodule size")
    left.legend(fontsize=7, loc="upper left")
    left.grid(axis="y", alpha=0.3)
    hit = table["detected"].astype(bool)
    right.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    right.scatter(table.loc[hit, "crop_dice"], table.loc[hit, "dice"], label="detected", s=25)
    right.scatter(
        table.loc[~hit, "crop_dice"],
        table.loc[~hit, "dice"],
        marker="x",
        color="tab:red",
        label="missed",
        s=30,
    )
    right.set_xlim(0, 1.02)
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("Dice, crop model at the true centre")
    right.set_ylabel("Dice, detect then segment (scan space)")
    right.set_title(f"Per nodule ({int(hit.sum())}/{len(table)} detected)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    _save(figure, path)


def plot_radiomics_agreement(
    features: pd.DataFrame, classes: pd.DataFrame, matched: int, good: float, path: str | Path
) -> None:
    """ICC(3,1) of every feature (predicted vs reference mask), by class; share >= ``good``."""
    figure = Figure(figsize=(9, 4), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    names = [c for c in classes["feature_class"] if c != "all"]
    for i, name in enumerate(names):
        values = features.loc[features["feature_class"] == name, "icc"].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        jitter = np.linspace(-0.25, 0.25, len(values)) if len(values) > 1 else np.zeros(len(values))
        axes.scatter(i + jitter, values, s=10, alpha=0.7)
        share = classes.loc[classes["feature_class"] == name, "share"]
        label = (
            f"{float(share.iloc[0]):.0%}" if len(share) and np.isfinite(share.iloc[0]) else "n/a"
        )
        axes.annotate(label, (i, 1.05), ha="center", fontsize=8)
    axes.axhline(good, color="grey", ls="--", lw=1, label=f"ICC = {good}")
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(-1.05, 1.12)
    axes.set_ylabel("ICC(3,1), predicted vs reference mask")
    axes.set_title(
        f"Radiomics agreement on {matched} matched nodule(s); "
        f"share of features with ICC >= {good} above each class"
    )
    if matched < 3:
        axes.text(
            0.99,
            0.03,
            f"{matched} matched nodule(s): too few for a meaningful ICC",
            transform=axes.transAxes,
            ha="right",
            va="bottom",
            color="tab:red",
        )
    axes.legend(fontsize=8, loc="lower left")
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def run_plot_cascade(
    *,
    cascade: str,
    summary: str,
    reference_features: str,
    agreement: str,
    agreement_classes: str,
    cascade_figure: str,
    agreement_figure: str,
) -> None:
    """Both figures from the tables of rule ``cascade`` (its matched nodules: the rows of
    ``reference_features``)."""
    plot_cascade(pd.read_csv(cascade), pd.read_csv(summary), cascade_figure)
    matched = len(pd.read_csv(reference_features))
    plot_radiomics_agreement(
        pd.read_csv(agreement),
        pd.read_csv(agreement_classes),
        matched,
        ICC_GOOD,
        agreement_figure,
    )
