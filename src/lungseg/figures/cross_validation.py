"""Figures of the cross-validation (rule ``plot_cv``, from the tables of rule ``cv_summary``):

- ``results/plots/cv_curves.png``: per model, training and validation Dice per epoch, the mean
  over folds with a band from the lowest to the highest fold, the mean curve's peak marked;
- ``results/plots/cv_comparison.png``: a forest plot of each variant's mean Dice difference
  against the baseline with its bootstrap interval, per size bucket.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from lungseg.core.atomic import atomic_path  # noqa: E402
from lungseg.core.style import DPI  # noqa: E402
from lungseg.evaluation.cross_validation import MEAN_FOLD  # noqa: E402
from lungseg.evaluation.statistics import ALL  # noqa: E402

logger = logging.getLogger(__name__)

PANEL_SIZE = (3.2, 2.8)  # inches per model panel
COLUMNS = 2


def save_figure(figure: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
    logger.info("wrote %s", path)


def cv_curves_figure(curves: pd.DataFrame, overfit: pd.DataFrame) -> Figure:
    """One panel per model: mean training and validation Dice over folds with their min-max
    bands; a star and a dashed line at the mean validation curve's peak, the folds' mean peak
    epoch and drop (``overfit``, fold ``mean``) in the title."""
    models = list(dict.fromkeys(curves["model"]))
    columns = min(COLUMNS, max(len(models), 1))
    rows = max(math.ceil(len(models) / columns), 1)
    figure = Figure(
        figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), dpi=DPI, layout="constrained"
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, sharey=True, squeeze=False)).ravel()
    means = overfit[overfit["fold"].astype(str) == MEAN_FOLD].set_index("model")
    for ax, model in zip(axes, models, strict=False):
        part = curves[curves["model"] == model].sort_values("epoch")
        epochs = part["epoch"].to_numpy()
        for name, label, marker in (
            ("train_dice", "training", "o"),
            ("val_dice", "validation", "s"),
        ):
            (line,) = ax.plot(epochs, part[f"{name}_mean"], f"-{marker}", ms=2.5, label=label)
            ax.fill_between(
                epochs, part[f"{name}_min"], part[f"{name}_max"], color=line.get_color(), alpha=0.2
            )
        peak = int(np.nanargmax(part["val_dice_mean"].to_numpy(dtype=float)))
        ax.axvline(epochs[peak], color="grey", ls="--", lw=1)
        value = float(part["val_dice_mean"].iloc[peak])
        ax.plot([epochs[peak]], [value], "*", color="black", ms=9, label=f"peak {value:.3f}")
        title = f"{model} ({int(part['n_folds'].max())} folds)"
        if model in means.index:
            row = means.loc[model]
            title += f"\nfolds' peak epoch {row['peak_epoch']:.1f}, drop {row['drop']:.3f}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("Epoch")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="lower right", fontsize=6)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel("Dice (fold mean; band min-max)")
    return figure


def cv_comparison_figure(comparison: pd.DataFrame) -> Figure:
    """Forest plot: per size bucket (``all`` first), each variant's mean Dice difference against
    the baseline with its interval; right of each, whether the interval excludes 0."""
    rows = comparison[comparison["model"] != comparison["baseline"]]
    baseline = str(comparison["baseline"].iloc[0]) if len(comparison) else "?"
    confidence = float(comparison["confidence"].iloc[0]) if len(comparison) else math.nan
    buckets = list(dict.fromkeys(rows["size_bucket"]))
    models = list(dict.fromkeys(rows["model"]))
    height = 1.0 + 0.22 * (len(rows) + len(buckets))
    figure = Figure(figsize=(6.0, max(height, 2.5)), dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    labels, y = [], 0.0
    for bucket in buckets:
        part = rows[rows["size_bucket"] == bucket]
        for _, row in part.iterrows():
            y -= 1.0
            labels.append((y, f"{bucket}: {row['model']} (n={int(row['n_nodules'])})"))
            mean = float(row["difference_mean"])
            if not np.isfinite(mean):
                ax.text(0, y, "no nodules", ha="center", va="center", fontsize=7, color="grey")
                continue
            low, high = float(row["difference_low"]), float(row["difference_high"])
            ax.errorbar(
                mean,
                y,
                xerr=[[mean - low], [high - mean]],
                fmt="o" if bucket == ALL else "s",
                color=colours[row["model"]],
                ms=4,
                capsize=3,
            )
            verdict = "significant" if bool(row["significant"]) else "not significant"
            ax.annotate(
                f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] {verdict}",
                (1.01, y),
                xycoords=("axes fraction", "data"),
                va="center",
                fontsize=6,
            )
        y -= 0.5
    ax.axvline(0.0, color="grey", ls="--", lw=1)
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylim(y + 0.25, 0.25)
    ax.set_xlabel(f"Dice difference vs {baseline} (mean over nodules, {confidence:.0%} interval)")
    ax.set_title(f"Cross-validation: variants vs {baseline} by nodule size", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return figure


def run_plot_cv(
    *, curves: str, comparison: str, overfitting: str, curves_figure: str, comparison_figure: str
) -> None:
    """Rule ``plot_cv``: both figures from results/cv/curves.csv, comparison.csv and
    overfitting.csv."""
    save_figure(cv_curves_figure(pd.read_csv(curves), pd.read_csv(overfitting)), curves_figure)
    save_figure(cv_comparison_figure(pd.read_csv(comparison)), comparison_figure)
