"""Memory and speed of one training step (forward, loss, backward, optimiser step) vs volume size.

Every point runs in a fresh subprocess so points cannot contaminate each other's peak: on CPU
the peak is the child's peak RSS, on CUDA ``torch.cuda.max_memory_allocated``. A series (one
variant, sizes ascending) stops at its first point that would not fit the memory budget: the
point is skipped when a linear fit of the earlier points predicts it over budget, and otherwise
runs under a hard guard (``RLIMIT_DATA`` on CPU, a memory fraction on CUDA) so an unexpected
excess ends as "did_not_fit" in that child, never as a machine out of memory.

Variants: ``unet`` (the baseline), ``iunet`` (lungseg's iUNet: resampling reconstructed by
memcnn, freed memory returned to the OS) and ``iunet_stock`` (iunets 0.1 as shipped, default
allocator), all with the same channels, levels and blocks per level.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import atomic_path, write_csv_atomic

log = logging.getLogger(__name__)

#: variant -> (model settings beyond width/levels/blocks, return freed memory to the OS)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "unet": ({"arch": "unet"}, True),
    "iunet": ({"arch": "iunet", "lean_memory": True}, True),
    "iunet_stock": ({"arch": "iunet", "lean_memory": False}, False),
}
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
    "note",
]
GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Point:
    """One measurement: a variant at one input size and depth."""

    series: str
    variant: str
    size: tuple[int, int, int]
    channels: int
    levels: int
    blocks_per_level: int

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    def model_settings(self) -> dict:
        extra, _ = VARIANTS[self.variant]
        return {
            **extra,
            "channels": self.channels,
            "levels": self.levels,
            "blocks_per_level": self.blocks_per_level,
        }


# --- child process: one training step ---------------------------------------------------------


def measure_step(point: Point, device_name: str, steps: int, threads: int) -> dict:
    """Build the model, run ``steps`` training steps, return peak memory and time per step."""
    import torch

    from lungseg.nets.models import build_model
    from lungseg.training.memory import (
        current_rss_bytes,
        peak_memory_bytes,
        reset_peak_rss,
        return_freed_memory_to_os,
    )

    if VARIANTS[point.variant][1]:
        return_freed_memory_to_os()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    model = build_model(point.model_settings()).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    image = torch.randn(1, 1, *point.size, device=device)
    target = (torch.rand(1, 1, *point.size, device=device) > 0.5).float()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()  # as CUDA's reset above: the peak of the steps, not of the imports
        before = current_rss_bytes()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(image)[0], target)
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
        del loss
    peak = peak_memory_bytes(device)
    # The first step also allocates optimiser state and warms caches: time the others.
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return {"peak_bytes": peak, "step_bytes": peak - before, "seconds": statistics.median(timed)}


def guard_cpu_memory(budget_bytes: int) -> None:
    """Cap this process's data segment so that its RSS cannot grow past ``budget_bytes``."""
    from lungseg.training.memory import current_rss_bytes

    with open("/proc/self/status") as status:
        data_kib = next(int(line.split()[1]) for line in status if line.startswith("VmData:"))
    headroom = max(budget_bytes - current_rss_bytes(), 0)
    limit = data_kib * 1024 + headroom
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of the measuring subprocess: JSON request in argv, JSON result on stdout."""
    request = json.loads((argv or sys.argv[1:])[0])
    point = Point(**{**request["point"], "size": tuple(request["point"]["size"])})
    import torch

    try:
        if request["device"] == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(request["budget_bytes"] / total, 1.0))
        else:
            import iunets  # noqa: F401  (import before the guard: library mappings are not data)

            guard_cpu_memory(request["budget_bytes"])
        result = {"status": "ok", **measure_step(point, **request["step"])}
    except (MemoryError, torch.OutOfMemoryError) as error:
        result = {"status": "did_not_fit", "note": f"out of memory under the guard: {error}"[:200]}
    except RuntimeError as error:
        if "alloc" not in str(error).lower() and "memory" not in str(error).lower():
            raise
        result = {"status": "did_not_fit", "note": f"out of memory under the guard: {error}"[:200]}
    print(json.dumps(result))
    return 0


# --- parent: series, budget, table ------------------------------------------------------------


def run_point(
    point: Point, device: str, budget_bytes: int, steps: int, threads: int, timeout_s: float
) -> dict:
    """Measure ``point`` in a fresh Python process."""
    request = {
        "point": asdict(point),
        "device": device,
        "budget_bytes": budget_bytes,
        "step": {"device_name": device, "steps": steps, "threads": threads},
    }
    command = [
        sys.executable,
        "-c",
        "import sys; from lungseg.bench.memory import child_main; sys.exit(child_main())",
        json.dumps(request),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"no result within {timeout_s:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if done.returncode < 0:  # killed by a signal, e.g. the kernel's OOM killer
            return {"status": "did_not_fit", "note": f"killed by signal {-done.returncode}"}
        return {"status": "failed", "note": tail[0][:200]}
    return json.loads(lines[-1])


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


def run_series(
    points: list[Point],
    device: str,
    budget_bytes: int,
    steps: int,
    threads: int,
    timeout_s: float,
) -> list[dict]:
    """Measure ``points`` in order; after the first that does not fit, mark the rest too."""
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
            log.info("measuring %s %s %s", point.variant, point.series, point.size)
            row.update(run_point(point, device, budget_bytes, steps, threads, timeout_s))
            log.info("-> %s", {k: v for k, v in row.items() if k not in asdict(point)})
        stopped = stopped or row["status"] != "ok"
        rows.append(row)
    return rows


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
    """Rows -> memory.csv's table, with bytes per voxel and ratios to the U-Net's point."""
    frame = pd.DataFrame(rows)
    frame[["size_d", "size_h", "size_w"]] = pd.DataFrame(frame.pop("size").tolist())
    frame["arch"] = [VARIANTS[v][0]["arch"] for v in frame["variant"]]
    for column in ("peak_bytes", "step_bytes", "seconds", "note"):
        if column not in frame:
            frame[column] = np.nan
    frame["peak_mb"] = frame.pop("peak_bytes") / MIB
    frame["step_mb"] = frame.pop("step_bytes") / MIB
    frame["bytes_per_voxel"] = frame["step_mb"] * MIB / frame["voxels"]
    frame["seconds_per_step"] = frame.pop("seconds")
    keys = ["series", "blocks_per_level", "size_d", "size_h", "size_w"]
    unet = frame.loc[frame["variant"] == "unet", [*keys, "step_mb", "seconds_per_step"]]
    joined = frame.merge(unet, on=keys, how="left", suffixes=("", "_unet"))
    frame["memory_vs_unet"] = (joined["step_mb"] / joined["step_mb_unet"]).to_numpy()
    frame["time_vs_unet"] = (
        joined["seconds_per_step"] / joined["seconds_per_step_unet"]
    ).to_numpy()
    frame["note"] = frame["note"].astype(object).where(frame["note"].notna(), "")
    return frame[COLUMNS].round(4)


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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("benchmark device 'cuda' requested but torch sees no CUDA device")
    return device


def run_benchmark(
    output_csv: Path,
    output_plot: Path,
    output_fit: Path,
    variants: list[str],
    sizes: list[list[int]],
    depth_size: list[int],
    depth_blocks: list[int],
    channels: int,
    levels: int,
    blocks_per_level: int,
    memory_budget_gb: float,
    fit_budgets_gb: list[float],
    device: str = "auto",
    steps: int = 2,
    threads: int = 1,
    point_timeout_s: float = 1800,
) -> pd.DataFrame:
    """Measure every series, write memory.csv, the fit table and memory.png."""
    device = resolve_device(device)
    series = plan(variants, sizes, depth_size, depth_blocks, channels, levels, blocks_per_level)
    budget = int(memory_budget_gb * GIB)
    rows = [
        row
        for points in series
        for row in run_series(points, device, budget, steps, threads, point_timeout_s)
    ]
    frame = to_table(rows)
    write_csv_atomic(output_csv, frame)
    write_csv_atomic(output_fit, largest_fitting(frame, fit_budgets_gb))
    plot_memory(frame, memory_budget_gb, output_plot)
    return frame


def configure_parser(parser: argparse.ArgumentParser, command: str) -> None:
    size = {"type": int, "nargs": 3, "metavar": ("D", "H", "W")}
    parser.add_argument("--output", type=Path, default=Path("results/benchmarks/memory.csv"))
    parser.add_argument("--fit", type=Path, default=Path("results/benchmarks/memory_fit.csv"))
    parser.add_argument("--plot", type=Path, default=Path("results/plots/memory.png"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--size", action="append", dest="sizes", help="repeatable", **size)
    parser.add_argument("--depth-size", default=[48, 48, 48], **size)
    parser.add_argument("--depth-blocks", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--blocks-per-level", type=int, default=2)
    parser.add_argument("--memory-budget-gb", type=float, default=4.0)
    parser.add_argument("--fit-budgets-gb", type=float, nargs="+", default=[24.0, 80.0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=2, help="steps per point; first is warm-up")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--point-timeout-s", type=float, default=1800)


def run_cli(args: argparse.Namespace, command: str) -> int:
    frame = run_benchmark(
        output_csv=args.output,
        output_plot=args.plot,
        output_fit=args.fit,
        variants=args.variants,
        sizes=args.sizes or [[32, 32, 32], [48, 48, 48], [64, 64, 64]],
        depth_size=args.depth_size,
        depth_blocks=args.depth_blocks,
        channels=args.channels,
        levels=args.levels,
        blocks_per_level=args.blocks_per_level,
        memory_budget_gb=args.memory_budget_gb,
        fit_budgets_gb=args.fit_budgets_gb,
        device=args.device,
        steps=args.steps,
        threads=args.threads,
        point_timeout_s=args.point_timeout_s,
    )
    log.info("benchmark: %d points, %d fit", len(frame), int((frame["status"] == "ok").sum()))
    return 0
