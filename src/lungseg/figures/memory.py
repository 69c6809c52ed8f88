"""The memory benchmark's figure: peak memory and time vs volume size, memory vs depth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.core.atomic import atomic_path


def _size_label(row: pd.Series) -> str:
    sides = (int(row["size_d"]), int(row["size_h"]), int(row["size_w"]))
    return f"{sides[0]}³" if len(set(sides)) == 1 else "x".join(map(str, sides))


def memory_figure(frame: pd.DataFrame, budget_gb: float):
    """Peak memory and time per step vs volume size, and step memory vs blocks per level."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        NullFormatter,
        NullLocator,
    )

    figure = Figure(figsize=(15, 4.5), dpi=120, layout="constrained")
    ax_memory, ax_time, ax_depth = figure.subplots(1, 3)
    sizes = frame[frame["series"] == "size"]
    for variant, group in sizes.groupby("variant"):
        fitted = group[group["status"] == "ok"]
        (line,) = ax_memory.plot(fitted["voxels"], fitted["peak_mb"] / 1024, "o-", label=variant)
        ax_time.plot(fitted["voxels"], fitted["seconds_per_step"], "o-", label=variant)
        missing = group[group["status"] != "ok"]
        ax_memory.plot(
            missing["voxels"], [budget_gb] * len(missing), "x", color=line.get_color(), ms=10
        )
    ax_memory.axhline(budget_gb, color="grey", ls="--", lw=1, label=f"budget {budget_gb:g} GiB")
    ax_memory.set(yscale="log", ylabel="peak memory (GiB)")
    ax_memory.set_title("peak memory of one training step, batch 1 (x: did not fit)")
    ax_time.set(yscale="log", ylabel="seconds per step")
    ax_time.set_title("time per training step")
    # Volume sizes on a log axis, labelled by their sides rather than by powers of ten.
    ticks = sizes.drop_duplicates("voxels").sort_values("voxels")
    for axis in (ax_memory, ax_time):
        axis.set_xscale("log")
        axis.set_xlabel("input volume (voxels, log scale)")
        axis.xaxis.set_major_locator(FixedLocator(ticks["voxels"].tolist()))
        axis.set_xticklabels([_size_label(row) for _, row in ticks.iterrows()])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
    depth = frame[(frame["series"] == "depth") & (frame["status"] == "ok")]
    for variant, group in depth.groupby("variant"):
        ax_depth.plot(group["blocks_per_level"], group["step_mb"], "o-", label=variant)
    if len(depth):
        ax_depth.set_title(f"step memory vs depth at {_size_label(depth.iloc[0])}")
        blocks = sorted(depth["blocks_per_level"].unique())
        ax_depth.set_xscale("log")
        ax_depth.xaxis.set_major_locator(FixedLocator(blocks))
        ax_depth.set_xticklabels([str(b) for b in blocks])
        ax_depth.xaxis.set_minor_locator(NullLocator())
    else:
        ax_depth.text(0.5, 0.5, "no depth series", ha="center", transform=ax_depth.transAxes)
    ax_depth.set(xlabel="blocks per level and side", ylabel="step memory above model (MiB)")
    for axis in (ax_memory, ax_time, ax_depth):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
        axis.grid(alpha=0.3)
    return figure


def plot_memory(frame: pd.DataFrame, budget_gb: float, path: Path) -> None:
    """Write :func:`memory_figure` as a PNG, atomically."""
    figure = memory_figure(frame, budget_gb)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
