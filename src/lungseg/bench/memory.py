"""Memory and speed of one training step (forward, loss, backward, optimiser step) vs volume size.

This module plans the benchmark and writes its tables; :mod:`lungseg.bench.step` measures one
point in a fresh child process, :mod:`lungseg.figures.memory` draws the figure.

A series (one variant, sizes ascending) stops at its first point that would not fit the memory
budget: the point is skipped when a line through the series' last two points predicts it over
budget, and otherwise runs under a hard guard in its child, so an unexpected excess ends as
``did_not_fit`` there, never as a machine out of memory. Variants (:data:`VARIANTS`): the
U-Net baseline, the same U-Net with activation checkpointing and/or bf16 autocast, lungseg's
iUNet and stock iunets 0.1, all with the same channels, levels and blocks per level.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.bench.settings import BenchmarkSettings
from lungseg.bench.step import VARIANTS, Point, run_point
from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import SettingsError

log = logging.getLogger(__name__)

#: the variants every other one is compared with: memory_vs_unet, memory_vs_unet_checkpoint
BASELINES = ("unet", "unet_checkpoint")
COLUMNS = [
    "series",
    "variant",
    "arch",
    "channels",
    "levels",
    "blocks_per_level",
    "size_d",
    "size_h",
    "size_w",
    "voxels",
    "device",
    "status",
    "peak_mb",
    "step_mb",
    "bytes_per_voxel",
    "seconds_per_step",
    "memory_vs_unet",
    "time_vs_unet",
    "memory_vs_unet_checkpoint",
    "time_vs_unet_checkpoint",
    "note",
]
FIT_COLUMNS = [
    "variant",
    "device",
    "budget_gb",
    "bytes_per_voxel",
    "fixed_mb",
    "max_voxels",
    "max_cube_side",
    "max_slices_512x512",
]
GIB = 1 << 30
MIB = 1 << 20


def predict_peak_bytes(done: list[dict], voxels: int) -> float | None:
    """Peak of the next point from a line through the last two measured points (or none)."""
    measured = [row for row in done if row["status"] == "ok"]
    if len(measured) < 2:
        return None
    first, last = measured[-2], measured[-1]
    if last["voxels"] == first["voxels"]:
        return None
    slope = (last["peak_bytes"] - first["peak_bytes"]) / (last["voxels"] - first["voxels"])
    return last["peak_bytes"] + max(slope, 0.0) * (voxels - last["voxels"])


#: the refined point aims this far below the budget (the line through two points is an estimate)
REFINE_MARGIN = 0.05


def refined_point(done: list[dict], over: Point, budget_bytes: int) -> Point | None:
    """The deepest point between the last measured one and ``over`` predicted to fit.

    Only for a series of one cross-section (whole-CT shapes 512 x 512 x N): the depth N is the
    largest multiple of ``2**(levels-1)`` whose predicted peak stays ``REFINE_MARGIN`` under the
    budget. None when no such depth lies strictly between the two points.
    """
    measured = [row for row in done if row["status"] == "ok"]
    if not measured or tuple(measured[-1]["size"][1:]) != tuple(over.size[1:]):
        return None
    last_depth, area = measured[-1]["size"][0], over.size[1] * over.size[2]
    factor = 2 ** (over.levels - 1)
    depth = (over.size[0] - 1) // factor * factor
    while depth > last_depth:
        predicted = predict_peak_bytes(done, depth * area)
        if predicted is not None and predicted <= (1 - REFINE_MARGIN) * budget_bytes:
            return replace(over, size=(depth, *over.size[1:]))
        depth -= factor
    return None


def run_series(
    points: list[Point],
    device: str,
    budget_bytes: int,
    steps: int,
    threads: int,
    timeout_s: float,
) -> list[dict]:
    """Measure ``points`` in order; after the first that does not fit, mark the rest too.

    Before the first point that does not fit (predicted or measured), one refined point
    (:func:`refined_point`) is measured, so a whole-CT series ends at its largest depth found by
    measurement, not only at the grid's last fitting size.
    """
    rows: list[dict] = []
    stopped = False
    for point in points:
        row = {**asdict(point), "voxels": point.voxels, "device": device}
        predicted = predict_peak_bytes(rows, point.voxels)
        if stopped:
            row.update(status="did_not_fit", note="a smaller point of this series did not fit")
        elif predicted is not None and predicted > budget_bytes:
            row.update(
                status="did_not_fit",
                note=f"predicted peak {predicted / GIB:.1f} GiB > budget {budget_bytes / GIB:g}",
            )
        else:
            row.update(measure(point, device, budget_bytes, steps, threads, timeout_s))
        if not stopped and row["status"] == "did_not_fit":
            refined = refined_point(rows, point, budget_bytes)
            if refined is not None:
                extra = {**asdict(refined), "voxels": refined.voxels, "device": device}
                extra.update(measure(refined, device, budget_bytes, steps, threads, timeout_s))
                extra["note"] = "; ".join(
                    n for n in ("refined: deepest predicted to fit", extra.get("note")) if n
                )
                rows.append(extra)
        stopped = stopped or row["status"] not in ("ok", "unsupported")
        rows.append(row)
    return rows


def measure(point: Point, device: str, budget_bytes: int, steps, threads, timeout_s) -> dict:
    log.info("measuring %s %s %s", point.variant, point.series, point.size)
    result = run_point(point, device, budget_bytes, steps, threads, timeout_s)
    log.info("-> %s", result)
    return result


def plan(
    variants: list[str],
    sizes: list[list[int]],
    depth_size: list[int],
    depth_blocks: list[int],
    channels: int,
    levels: int,
    blocks_per_level: int,
) -> list[list[Point]]:
    """The series to measure: each variant over ``sizes``, then over ``depth_blocks`` (if any)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown benchmark variants {unknown}; known: {sorted(VARIANTS)}")
    factor = 2 ** (levels - 1)
    for size in [*sizes, depth_size]:
        if len(size) != 3 or any(s % factor for s in size):
            raise ValueError(f"benchmark size {size} must be 3 sizes divisible by {factor}")
    by_volume = sorted((tuple(s) for s in sizes), key=math.prod)
    series = []
    for variant in variants:
        series.append(
            [Point("size", variant, s, channels, levels, blocks_per_level) for s in by_volume]
        )
    for variant in variants if depth_blocks else []:
        series.append(
            [
                Point("depth", variant, tuple(depth_size), channels, levels, blocks)
                for blocks in sorted(depth_blocks)
            ]
        )
    return series


def to_table(rows: list[dict]) -> pd.DataFrame:
    """Rows -> memory.csv's table, with bytes per voxel and ratios to the baselines' points."""
    frame = pd.DataFrame(rows)
    frame[["size_d", "size_h", "size_w"]] = pd.DataFrame(frame.pop("size").tolist())
    frame["arch"] = [VARIANTS[v].arch for v in frame["variant"]]
    for column in ("peak_bytes", "step_bytes", "seconds", "note"):
        if column not in frame:
            frame[column] = np.nan
    frame["peak_mb"] = frame.pop("peak_bytes") / MIB
    frame["step_mb"] = frame.pop("step_bytes") / MIB
    frame["bytes_per_voxel"] = frame["step_mb"] * MIB / frame["voxels"]
    frame["seconds_per_step"] = frame.pop("seconds")
    keys = ["series", "blocks_per_level", "size_d", "size_h", "size_w"]
    for baseline in BASELINES:
        measured = frame.loc[frame["variant"] == baseline, [*keys, "step_mb", "seconds_per_step"]]
        joined = frame.merge(measured, on=keys, how="left", suffixes=("", "_base"))
        frame[f"memory_vs_{baseline}"] = (joined["step_mb"] / joined["step_mb_base"]).to_numpy()
        frame[f"time_vs_{baseline}"] = (
            joined["seconds_per_step"] / joined["seconds_per_step_base"]
        ).to_numpy()
    frame["note"] = frame["note"].astype(object).where(frame["note"].notna(), "")
    return frame[COLUMNS].round(4)


def largest_fitting(frame: pd.DataFrame, budgets_gb: list[float]) -> pd.DataFrame:
    """Per variant and budget: largest volume a line through the two largest sizes allows.

    Slope: step memory per voxel between the two largest sizes; intercept through the largest
    size's process peak. No row for a variant whose step memory does not grow between them.
    """
    rows = []
    for variant, group in frame[(frame["series"] == "size") & (frame["status"] == "ok")].groupby(
        "variant"
    ):
        group = group.sort_values("voxels")
        if len(group) < 2:
            continue
        small, large = group.iloc[-2], group.iloc[-1]
        # The slope from the step's own memory: the process peak also holds the interpreter,
        # libraries and model, whose allocator noise swamps small steps.
        slope = (large["step_mb"] - small["step_mb"]) * MIB / (large["voxels"] - small["voxels"])
        fixed = large["peak_mb"] * MIB - slope * large["voxels"]
        if slope <= 0:  # the sizes are too small to rise above allocator noise
            log.warning(
                "%s: memory does not grow from %s to %s voxels; no fit",
                variant,
                small["voxels"],
                large["voxels"],
            )
            continue
        for budget in budgets_gb:
            voxels = int((budget * GIB - fixed) / slope)
            rows.append(
                {
                    "variant": variant,
                    "device": large["device"],
                    "budget_gb": budget,
                    "bytes_per_voxel": round(slope, 1),
                    "fixed_mb": round(fixed / MIB, 1),
                    "max_voxels": voxels,
                    "max_cube_side": int(round(voxels ** (1 / 3), 6)),
                    "max_slices_512x512": voxels // (512 * 512),
                }
            )
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SettingsError("benchmark.device is 'cuda' but torch sees no CUDA device")
    return device


def run_benchmark(
    *,
    table: str = "results/benchmarks/memory.csv",
    fit: str = "results/benchmarks/memory_fit.csv",
    plot: str = "results/plots/memory.png",
    settings: BenchmarkSettings,
    threads: int = 1,
) -> pd.DataFrame:
    """Memory and speed of one training step vs volume size: memory.csv, the fit table, the plot."""
    from lungseg.figures.memory import plot_memory

    device = resolve_device(settings.device)
    series = plan(
        list(settings.variants),
        [list(size) for size in settings.sizes],
        list(settings.depth_size),
        list(settings.depth_blocks),
        settings.channels,
        settings.levels,
        settings.blocks_per_level,
    )
    budget = int(settings.memory_budget_gb * GIB)
    rows = [
        row
        for points in series
        for row in run_series(
            points, device, budget, settings.steps, threads, settings.point_timeout_s
        )
    ]
    frame = to_table(rows)
    write_csv_atomic(Path(table), frame)
    write_csv_atomic(Path(fit), largest_fitting(frame, list(settings.fit_budgets_gb)))
    plot_memory(frame, settings.memory_budget_gb, Path(plot))
    log.info("benchmark: %d points, %d fit", len(frame), int((frame["status"] == "ok").sum()))
    return frame
