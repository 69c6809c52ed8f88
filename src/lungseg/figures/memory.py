"""The memory benchmark's figure: peak memory and time vs volume size, memory vs depth."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungseg.core.atomic import atomic_path


def _size_label(row: pd.Series) -> str:
    sides = (int(row["size_d"]), int(row["size_h"]), int(row["size_w"]))
    return f"{sides[0]}³" if len(set(sides)) == 1 else "x".join(map(str, sides))


def memory_figure(frame: pd.DataFrame, budget_gb: float):
    """Peak memory and time per step vs volume size, and (with a depth series) step memory vs
    blocks per level."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import (
        FixedLocator,
        FuncFormatter,
        LogLocator,
        NullFormatter,
        NullLocator,
    )

    sizes = frame[frame["series"] == "size"]
    depth = frame[(frame["series"] == "depth") & (frame["status"] == "ok")]
    panels = 3 if len(depth) else 2  # no empty panel when there is no depth series
    figure = Figure(figsize=(5 * panels, 4.5), dpi=120, layout="constrained")
    ax_memory, ax_time, *ax_depth = figure.subplots(1, panels)
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
    # Volume sizes on a log axis, labelled by their sides rather than by powers of ten; a
    # series of one cross-section (whole CTs, 512 x 512 x N) by its number of slices.
    ticks = sizes.drop_duplicates("voxels").sort_values("voxels")
    measured = set(sizes.loc[sizes["status"] == "ok", "voxels"])
    planes = set(zip(ticks["size_h"], ticks["size_w"], strict=True))
    by_slices = len(planes) == 1 and len(ticks) > 1
    if by_slices:
        height, width = planes.pop()
        xlabel = f"slices N of {int(height)} x {int(width)} x N (log scale)"
        labels = [str(int(d)) for d in ticks["size_d"]]
    else:
        xlabel = "input volume (voxels, log scale)"
        labels = [_size_label(row) for _, row in ticks.iterrows()]
    # A size where nothing fitted is named at its crosses, not on the axis (where it would
    # crowd the largest measured size's label).
    on_axis = {}
    for voxels, label in zip(ticks["voxels"], labels, strict=True):
        if voxels in measured or not measured:
            on_axis[voxels] = label
        else:
            ax_memory.annotate(
                label, (voxels, budget_gb), xytext=(0, -16), textcoords="offset points",
                ha="center",
            )  # fmt: skip
    for axis in (ax_memory, ax_time):
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.xaxis.set_major_locator(FixedLocator(list(on_axis)))
        axis.set_xticklabels(list(on_axis.values()))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.yaxis.set_minor_formatter(NullFormatter())
    for axis in ax_depth:
        for variant, group in depth.groupby("variant"):
            axis.plot(group["blocks_per_level"], group["step_mb"], "o-", label=variant)
        axis.set_title(f"step memory vs depth at {_size_label(depth.iloc[0])}")
        blocks = sorted(depth["blocks_per_level"].unique())
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(FixedLocator(blocks))
        axis.set_xticklabels([str(b) for b in blocks])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set(xlabel="blocks per level and side", ylabel="step memory above model (MiB)")
    for axis in (ax_memory, ax_time, *ax_depth):
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
        axis.grid(alpha=0.3)
    return figure


def plot_memory(frame: pd.DataFrame, budget_gb: float, path: Path) -> None:
    """Write :func:`memory_figure` as a PNG, atomically."""
    figure = memory_figure(frame, budget_gb)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=figure.dpi)
