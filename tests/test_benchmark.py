"""Benchmark: real subprocess measurements on tiny networks, the budget guard, table and plot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import SNAKEMAKE

from lungseg.bench.memory import (
    COLUMNS,
    FIT_COLUMNS,
    GIB,
    MIB,
    largest_fitting,
    plan,
    predict_peak_bytes,
    refined_point,
    run_benchmark,
    run_series,
)
from lungseg.bench.settings import BenchmarkSettings
from lungseg.bench.step import Point
from lungseg.core.errors import SettingsError
from lungseg.core.settings import schema_defaults
from lungseg.figures.memory import memory_figure

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("done", "voxels", "expected"),
    [
        ([], 100, None),
        ([{"status": "ok", "voxels": 10, "peak_bytes": 1000}], 100, None),
        (
            [
                {"status": "ok", "voxels": 10, "peak_bytes": 1000},
                {"status": "ok", "voxels": 20, "peak_bytes": 1500},
            ],
            100,
            5500.0,
        ),
        (
            [
                {"status": "ok", "voxels": 10, "peak_bytes": 1000},
                {"status": "ok", "voxels": 20, "peak_bytes": 900},
            ],
            100,
            900.0,
        ),
    ],
)
def test_predict_peak_bytes(done, voxels, expected):
    assert predict_peak_bytes(done, voxels) == expected


def _done(*depths_peaks, area=512 * 512):
    return [
        {"status": "ok", "size": (d, 512, 512), "voxels": d * area, "peak_bytes": peak}
        for d, peak in depths_peaks
    ]


@pytest.mark.parametrize(
    ("done", "over", "budget", "expected"),
    [
        # 1 GiB per 16 slices from 16 (1 GiB) and 32 (2 GiB): 0.95 * 5 GiB allows 76 -> 72 (x8)
        (_done((16, GIB), (32, 2 * GIB)), (128, 512, 512), 5 * GIB, (72, 512, 512)),
        # nothing between the last measured depth and the point over budget
        (_done((16, GIB), (32, 2 * GIB)), (40, 512, 512), 2 * GIB, None),
        # another cross-section: no refinement (cubes grow in every axis)
        (_done((16, GIB), (32, 2 * GIB)), (64, 256, 256), 5 * GIB, None),
        # one measured point: no line, no refinement
        (_done((16, GIB)), (64, 512, 512), 5 * GIB, None),
        (_done(), (64, 512, 512), 5 * GIB, None),
    ],
)
def test_refined_point_is_the_deepest_predicted_to_fit(done, over, budget, expected):
    point = refined_point(done, Point("size", "unet", over, 16, 4, 2), budget)
    assert (point.size if point else None) == expected


def test_a_series_measures_its_refined_point_before_it_stops(monkeypatch):
    # A fake step of 1 GiB per 16 slices of 512 x 512: 16, 32 and 64 fit a 5 GiB budget, 128 is
    # predicted over it, so 72 slices (the deepest multiple of 8 under 0.95 * 5 GiB) is measured.
    def fake_run_point(point, *args):
        return {"status": "ok", "peak_bytes": point.size[0] / 16 * GIB, "step_bytes": 1}

    monkeypatch.setattr("lungseg.bench.memory.run_point", fake_run_point)
    points = [Point("size", "unet", (d, 512, 512), 16, 4, 2) for d in (16, 32, 64, 128, 256)]
    rows = run_series(points, "cpu", 5 * GIB, steps=1, threads=1, timeout_s=1)
    assert [(r["size"][0], r["status"]) for r in rows] == [
        (16, "ok"), (32, "ok"), (64, "ok"), (72, "ok"), (128, "did_not_fit"), (256, "did_not_fit")
    ]  # fmt: skip
    assert rows[3]["note"].startswith("refined")


def _size_points(variant, peaks_mb, steps_mb):
    return [
        {"series": "size", "variant": variant, "status": "ok", "device": "cpu", "voxels": voxels}
        | {"peak_mb": peak, "step_mb": step}
        for voxels, peak, step in zip((1000, 2000, 3000), peaks_mb, steps_mb, strict=True)
    ]


def test_largest_fitting_extrapolates_the_two_largest_sizes_and_skips_flat_ones():
    # unet: the step costs 1 MiB per 1000 voxels, 10 MiB fixed (the first point is ignored);
    # iunet: its step does not grow between its two largest sizes, so no line can be drawn.
    frame = pd.DataFrame(
        _size_points("unet", [999, 12, 13], [0, 1, 2]) + _size_points("iunet", [5, 6, 7], [1, 1, 1])
    )
    fit = largest_fitting(frame, [1])
    assert list(fit.columns) == FIT_COLUMNS
    assert fit["variant"].tolist() == ["unet"]
    row = fit.iloc[0]
    assert row["bytes_per_voxel"] == pytest.approx(MIB / 1000, abs=0.1)
    assert row["fixed_mb"] == pytest.approx(10)
    assert row["max_voxels"] == (1024 - 10) * 1000  # (1 GiB - 10 MiB) / (1 MiB / 1000)
    assert row["max_cube_side"] == 100  # 1014000 ** (1/3) = 100.46
    flat_only = largest_fitting(frame[frame["variant"] == "iunet"], [1])
    assert flat_only.empty and list(flat_only.columns) == FIT_COLUMNS  # a CSV with its header


def test_plan_sorts_sizes_and_rejects_bad_ones():
    series = plan(["unet", "iunet"], [[16, 16, 16], [8, 8, 8]], [8, 8, 8], [4, 1], 4, 2, 1)
    assert [p.size for p in series[0]] == [(8, 8, 8), (16, 16, 16)]
    assert [p.blocks_per_level for p in series[2]] == [1, 4]
    assert len(series) == 4
    with pytest.raises(ValueError, match="divisible by 4"):
        plan(["unet"], [[8, 8, 6]], [8, 8, 8], [1], 4, 3, 1)
    with pytest.raises(ValueError, match="unknown benchmark variants"):
        plan(["vnet"], [[8, 8, 8]], [8, 8, 8], [1], 4, 2, 1)


# slow: a real benchmark run, one child process per point (~35 s)
@pytest.mark.slow
def test_benchmark_writes_table_fit_and_plot(tmp_path):
    settings = BenchmarkSettings.from_config(
        {
            "variants": ["unet", "unet_checkpoint", "iunet"],
            "sizes": [[64, 64, 64], [8, 8, 8]],
            "depth_size": [8, 8, 8],
            "depth_blocks": [],
            "channels": 4,
            "levels": 2,
            "blocks_per_level": 1,
            "fit_budgets_gb": [24],
            "device": "cpu",
            "steps": 1,
        }
    )
    frame = run_benchmark(
        table=str(tmp_path / "memory.csv"),
        plot=str(tmp_path / "memory.png"),
        fit=str(tmp_path / "memory_fit.csv"),
        settings=settings,
    )
    table = pd.read_csv(tmp_path / "memory.csv")
    assert list(table.columns) == COLUMNS
    assert (table["status"] == "ok").all(), table["note"].tolist()
    assert (table["peak_mb"] > table["step_mb"]).all() and (table["step_mb"] >= 0).all()
    # Tiny points sit in allocator noise; the larger one must show the step's memory.
    assert (table.loc[table["voxels"] == 262144, "step_mb"] > 0).all()
    assert table["voxels"].tolist() == [512, 262144] * 3
    by_variant = {v: g.reset_index() for v, g in table.groupby("variant")}
    assert (by_variant["unet"]["memory_vs_unet"] == 1).all()
    assert (by_variant["unet_checkpoint"]["memory_vs_unet_checkpoint"] == 1).all()
    iunet = by_variant["iunet"]
    for baseline in ("unet", "unet_checkpoint"):
        ratio = iunet["step_mb"] / by_variant[baseline]["step_mb"]
        assert iunet[f"memory_vs_{baseline}"].tolist() == pytest.approx(ratio.tolist(), abs=1e-3)
        ratio = iunet["seconds_per_step"] / by_variant[baseline]["seconds_per_step"]
        assert iunet[f"time_vs_{baseline}"].tolist() == pytest.approx(ratio.tolist(), rel=0.01)
    fit = pd.read_csv(tmp_path / "memory_fit.csv")
    assert list(fit.columns) == FIT_COLUMNS
    assert set(fit["variant"]) <= {"unet", "unet_checkpoint", "iunet"}
    assert {"unet", "iunet"} <= set(fit["variant"]) and (fit["max_voxels"] > 0).all()
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"
    assert len(frame) == len(table) == 6


def test_settings_come_from_the_schema_and_name_bad_keys():
    settings = BenchmarkSettings.from_config({})
    defaults = schema_defaults("benchmark")
    assert list(settings.variants) == defaults["variants"]
    assert settings.to_config() == {
        k: v for k, v in defaults.items() if k not in ("threads", "runtime_min")
    }
    with pytest.raises(SettingsError, match=r"benchmark.sizes.*levels"):
        BenchmarkSettings.from_config({"sizes": [[8, 8, 6]], "levels": 3})
    with pytest.raises(SettingsError, match="variants"):
        BenchmarkSettings.from_config({"variants": ["vnet"]})


def test_point_over_budget_is_recorded_not_crashed():
    # A budget below the bare interpreter's RSS: the child's guard must refuse the model.
    points = [Point("size", "iunet", size, 4, 2, 1) for size in [(16, 16, 16), (32, 32, 32)]]
    rows = run_series(points, "cpu", int(0.1 * GIB), steps=1, threads=1, timeout_s=120)
    assert [row["status"] for row in rows] == ["did_not_fit", "did_not_fit"]
    assert "guard" in rows[0]["note"]
    assert "smaller point" in rows[1]["note"]


def test_snakemake_schedules_only_the_benchmark_rule(tmp_path):
    done = subprocess.run(
        [SNAKEMAKE, "-n", "benchmark", "--cores", "1", "--workflow-profile", "none", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "benchmark" in done.stdout
    assert "train" not in done.stdout


def test_memory_figure_labels_sizes_by_their_sides_and_marks_the_budget():
    rows = [
        {"series": "size", "variant": v, "status": status, "size_d": n, "size_h": n, "size_w": n}
        | {"voxels": n**3, "peak_mb": 300.0 + n, "seconds_per_step": n / 10, "step_mb": n / 2}
        | {"blocks_per_level": 2}
        for v in ("unet", "iunet")
        for n, status in ((32, "ok"), (64, "ok"), (128, "did_not_fit" if v == "unet" else "ok"))
    ] + [
        {"series": "depth", "variant": "iunet", "status": "ok", "size_d": 48, "size_h": 48}
        | {"size_w": 48, "voxels": 48**3, "peak_mb": 400.0, "seconds_per_step": 1.0}
        | {"step_mb": 100.0 + b, "blocks_per_level": b}
        for b in (1, 2, 4, 8)
    ]
    figure = memory_figure(pd.DataFrame(rows), budget_gb=4)
    memory, time, depth = figure.axes
    assert memory.get_ylabel() == "peak memory (GiB)" and "did not fit" in memory.get_title()
    assert time.get_ylabel() == "seconds per step"
    for axis in (memory, time):
        assert [t.get_text() for t in axis.get_xticklabels()] == ["32³", "64³", "128³"]
        assert not any("10^" in t.get_text() for t in axis.get_yticklabels())
    assert [t.get_text() for t in depth.get_xticklabels()] == ["1", "2", "4", "8"]
    assert depth.get_title() == "step memory vs depth at 48³"
    labels = memory.get_legend_handles_labels()[1]
    assert {"unet", "iunet", "budget 4 GiB"} <= set(labels)
    # the unet point that did not fit is drawn as an x on the budget line
    crosses = [line for line in memory.get_lines() if line.get_marker() == "x"]
    assert any(list(line.get_ydata()) == [4] for line in crosses)


def test_memory_figure_of_whole_ct_shapes_is_labelled_by_slices_without_a_depth_panel():
    rows = [
        {"series": "size", "variant": v, "status": status, "size_d": n, "size_h": 512}
        | {"size_w": 512, "voxels": n * 512 * 512, "peak_mb": 1000.0 * n, "step_mb": 900.0 * n}
        | {"seconds_per_step": 2.0 * n, "blocks_per_level": 2}
        for v in ("unet", "iunet")
        for n, status in ((16, "ok"), (32, "ok"), (72 if v == "unet" else 400, "ok"))
    ]
    rows += [rows[-1] | {"size_d": 512, "voxels": 512**3, "status": "did_not_fit"}]
    figure = memory_figure(pd.DataFrame(rows), budget_gb=22)
    assert len(figure.axes) == 2  # no empty depth panel
    for axis in figure.axes:
        assert [t.get_text() for t in axis.get_xticklabels()] == ["16", "32", "72", "400"]
        assert axis.get_xlabel() == "slices N of 512 x 512 x N (log scale)"
    # 512, where nothing fitted, is named at its cross instead
    assert [t.get_text() for t in figure.axes[0].texts] == ["512"]
