"""Scale benchmark: per-stage costs from Snakemake benchmark files and job logs, growth exponents,
figure, the detection and prediction stages (a real tiny run), the config/lidc.yaml projection.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lungseg.bench.scale import growth, scale_figure, scale_patients, stage_costs

TSV_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark_file(path, seconds, rss, written, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TSV_HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t{written}\t50\t{cpu}\n")


def test_stage_costs_sum_jobs_and_take_the_largest_peak(tmp_path):
    for i, rss in enumerate((100, 300)):
        _benchmark_file(tmp_path / f"benchmarks/convert/P{i}/S{i}.tsv", 2.0, rss, 10, 1.5)
    _benchmark_file(tmp_path / "benchmarks/index.tsv", 4.0, 200, 1, 3.0)
    (tmp_path / "results/volumes").mkdir(parents=True)
    (tmp_path / "results/volumes/a.h5").write_bytes(b"x" * 2_000_000)
    costs = stage_costs(tmp_path).set_index("stage")
    assert list(costs.index) == [
        "index",
        "convert",
    ]  # workflow order, stages without files left out
    assert costs.loc["convert", "jobs"] == 2 and costs.loc["convert", "cpu_s"] == 3.0
    assert costs.loc["convert", "max_rss_mb"] == 300 and costs.loc["convert", "written_mb"] == 20
    assert costs.loc["convert", "disk_mb"] == pytest.approx(2.0)


def test_stage_costs_take_cpu_seconds_from_the_job_logs(tmp_path):
    """A job's log line beats Snakemake's sampled cpu_time; a log without it falls back."""
    from lungseg.core.rule import RESOURCES_LINE

    for i in range(2):
        _benchmark_file(tmp_path / f"benchmarks/convert/P{i}/S{i}.tsv", 2.0, 100, 10, 1.5)
    log = tmp_path / "logs/convert/P0/S0.log"
    log.parent.mkdir(parents=True)
    line = RESOURCES_LINE.format(cpu_s=1.875, max_rss_mb=90.0)
    log.write_text(f"2026-12-02 INFO lungseg: converted\n2026-12-02 INFO lungseg: {line}\n")
    (tmp_path / "logs/convert/P1").mkdir(parents=True)
    (tmp_path / "logs/convert/P1/S1.log").write_text("2026-12-02 INFO lungseg: converted\n")
    costs = stage_costs(tmp_path).set_index("stage")
    assert costs.loc["convert", "cpu_s"] == pytest.approx(1.875 + 1.5)


def test_call_logged_ends_the_log_file_with_the_jobs_cpu_seconds(tmp_path, capsys):
    """The resources line goes to the log file (after an error too), not to the terminal."""
    from lungseg.core.errors import LungsegError
    from lungseg.core.rule import call_logged, logged_resources

    def busy() -> None:
        total = 0
        for i in range(3_000_000):
            total += i * i

    def bad() -> None:
        raise LungsegError("cohort.csv: column 'x' missing")

    log = tmp_path / "job.log"
    assert call_logged(busy, {}, str(log)) == 0
    resources = logged_resources(log.read_text())
    assert resources is not None and resources["cpu_s"] > 0.05
    assert call_logged(bad, {}, str(log)) == 1
    lines = log.read_text().splitlines()
    assert "column 'x' missing" in lines[-2] and logged_resources(lines[-1]) is not None
    assert "job resources" not in capsys.readouterr().err


def test_growth_fits_the_exponent_between_the_two_largest_runs_and_projects():
    rows = [
        {"scans": n, "stage": "convert", "jobs": n, "cpu_s": 2.0 * n, "wall_s": 3.0 * n}
        | {"max_rss_mb": 400.0, "written_mb": 50.0 * n, "disk_mb": 60.0 * n}
        for n in (10, 30, 100)
    ] + [
        {"scans": n, "stage": "cohort", "jobs": 1, "cpu_s": 0.01 * n**2, "wall_s": 5.0}
        | {"max_rss_mb": 250.0, "written_mb": 0.0, "disk_mb": 0.01}
        for n in (10, 30, 100)
    ]
    frame = pd.DataFrame(rows)
    fits = growth(frame).set_index("stage")
    assert fits.loc["convert", "k_cpu_s"] == pytest.approx(1.0)
    assert fits.loc["convert", "cpu_s_at_1018"] == pytest.approx(2036.0)
    assert fits.loc["convert", "jobs_at_1018"] == pytest.approx(1018)
    assert fits.loc["cohort", "k_cpu_s"] == pytest.approx(2.0)
    assert fits.loc["cohort", "k_max_rss_mb"] == pytest.approx(0.0)
    assert pd.isna(fits.loc["cohort", "k_written_mb"])  # nothing written: no exponent
    figure = scale_figure(frame, fits.reset_index())
    assert [axis.get_xlabel() for axis in figure.axes] == ["sample scans"] * 3
    assert "k_slices" not in fits  # no slices column: no per-slice exponents


@pytest.mark.parametrize(
    ("slices", "cpu_s", "k_slices", "k_cpu_vs_slices", "cpu_at_1018_by_slices"),
    [
        # longer scans in the larger run, constant work per slice: N^1.2 overall, 1 per slice
        ((3000, 12000), (30.0, 120.0), 1.151, 1.0, 2400.0),
        # as many slices per scan, work per slice doubling: grows faster than the data
        ((3000, 10000), (30.0, 200.0), 1.0, 1.576, 29912.4),
    ],
)
def test_growth_against_slices_separates_longer_scans_from_costlier_slices(
    slices, cpu_s, k_slices, k_cpu_vs_slices, cpu_at_1018_by_slices
):
    rows = [
        {"scans": n, "stage": "convert", "jobs": n, "slices": s, "cpu_s": c, "wall_s": c}
        | {"max_rss_mb": 400.0, "written_mb": 1.0, "disk_mb": s / 100}
        for n, s, c in zip((30, 100), slices, cpu_s, strict=True)
    ]
    fits = growth(pd.DataFrame(rows), total_slices=240_000).iloc[0]
    assert fits["k_slices"] == pytest.approx(k_slices, abs=1e-3)
    assert fits["k_cpu_s_vs_slices"] == pytest.approx(k_cpu_vs_slices, abs=1e-3)
    assert fits["k_disk_mb_vs_slices"] == pytest.approx(1.0)
    assert fits["cpu_s_at_1018_by_slices"] == pytest.approx(cpu_at_1018_by_slices, rel=1e-3)


def test_scale_patients_spread_over_the_database_and_nest_nothing_twice():
    patients = scale_patients(30)
    assert len(set(patients)) == 30 and patients == sorted(patients)
    assert patients[0] == "LIDC-IDRI-0001" and all(p.startswith("LIDC-IDRI-") for p in patients)


def test_sliding_window_coverage_counts_monais_windows():
    """The voxels MONAI's windows cover per canvas voxel, as its own window list gives them."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from lungseg.bench.scale_lidc import window_coverage

    for canvas, patch in (((88, 80, 96), (32, 48, 48)), ((320, 320, 384), (96, 96, 96))):
        interval = _get_scan_interval(canvas, patch, 3, (0.25,) * 3)
        windows = len(dense_patch_slices(canvas, patch, interval))
        expected = windows * math.prod(patch) / math.prod(canvas)
        assert window_coverage(canvas, patch, 0.25) == pytest.approx(expected)
    assert window_coverage((88, 80, 96), (32, 48, 48), 0.25) == pytest.approx(2.618, abs=1e-3)


def test_detector_seconds_a_scan_are_the_difference_between_the_two_largest_runs(tmp_path):
    from lungseg.bench.scale_lidc import detector_scan_seconds
    from lungseg.core.rule import RESOURCES_LINE

    runs = {}
    for scans, val, cpu in ((10, 2, (7.0, 20.0)), (30, 7, (9.5, 40.0))):
        run = runs[scans] = tmp_path / f"N{scans}"
        for i in range(val):
            _benchmark_file(run / f"benchmarks/predict/1.2.{i}.tsv", 20.0, 1300, 30, 15.0)
        for name, seconds in zip(("iunet_whole", "unet_patch"), cpu, strict=True):
            log = run / f"logs/detect/{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("x INFO lungseg: " + RESOURCES_LINE.format(cpu_s=seconds, max_rss_mb=1))
    found = detector_scan_seconds(runs).set_index("detector")["cpu_s_per_scan"]
    assert found["iunet_whole"] == pytest.approx(0.5) and found["unet_patch"] == pytest.approx(4)


def test_lidc_projection_scales_detection_by_canvas_network_and_windows():
    """Per-scan stages linear in the scans, the others from the projection; detection scaled
    by the lidc.yaml canvas, network and sliding windows; GPU stages not measured."""
    from lungseg.bench.scale_lidc import lidc_config, lidc_projection, window_coverage
    from lungseg.bench.scale_stages import read_yaml

    sample, lidc = read_yaml("config.yaml"), lidc_config("config/lidc.yaml")
    stages = ("convert", "crops", "detection_volume", "detect", "predict")
    jobs = {"convert": 30, "crops": 1, "detection_volume": 30, "detect": 2, "predict": 6}
    frame = pd.DataFrame(
        [
            {"scans": 30, "stage": s, "jobs": jobs[s], "cpu_s": 36.0, "disk_mb": 300.0}
            for s in stages
        ]
    )
    fit = {"cpu_s_at_1018_by_slices": 3600.0, "cpu_s_at_1018": 1.0}
    fit |= {"disk_mb_at_1018_by_slices": 1000.0, "disk_mb_at_1018": 1.0, "jobs_at_1018": 9.0}
    fits = pd.DataFrame([{"stage": s} | fit for s in stages])
    volumes = pd.DataFrame(
        {"sample_cpu_s": [1.0, 1.0], "lidc_cpu_s": [4.0, 6.0], "sample_mb": [1.0, 1.0]}
        | {"lidc_mb": [30.0, 50.0]}
    )
    detectors = pd.DataFrame(
        {"detector": ["iunet_whole", "unet_patch"], "cpu_s_per_scan": [0.5, 4.0]}
    )
    networks = pd.DataFrame({"detector": ["iunet_whole", "unet_patch"], "ratio": [10.0, 20.0]})
    out = lidc_projection(
        frame, fits, sample, lidc, volumes=volumes, detectors=detectors, networks=networks
    ).set_index("stage")
    per_scan, val = 1018 / 30, 6 * 1018 / 30
    canvas = (320 * 320 * 384) / (88 * 80 * 96)
    windows = window_coverage((320, 320, 384), (96, 96, 96), 0.25)
    windows /= window_coverage((88, 80, 96), (32, 48, 48), 0.25)
    assert out.loc["convert", "jobs"] == 1018
    assert out.loc["convert", "cpu_h"] == pytest.approx(36 * per_scan / 3600, abs=1e-3)
    assert out.loc["convert", "disk_gb"] == pytest.approx(0.3 * per_scan, abs=1e-3)
    assert out.loc["crops", "disk_gb"] == 8.0 and out.loc["crops", "cpu_h"] == 8.0  # 64^3 / 32^3
    volume = out.loc["detection_volume"]
    assert volume["cpu_h"] == pytest.approx((36 * per_scan + 1018 * 4) / 3600, abs=1e-3)
    assert volume["disk_gb"] == pytest.approx(0.3 * per_scan * 40, rel=1e-3)
    whole, patch = 0.5 * canvas * 10, 4.0 * canvas * 20 * windows
    assert out.loc["detect", "cpu_h"] == pytest.approx(val * (whole + patch) / 3600, rel=1e-3)
    predict = out.loc["predict[iunet_whole]"]
    assert predict["jobs"] == round(val)
    assert predict["cpu_h"] == pytest.approx((36 * per_scan + val * (whole - 0.5)) / 3600, rel=1e-3)
    assert pd.isna(out.loc["train", "gpu_h"]) and "not measured here" in out.loc["train", "method"]
    assert out.loc["train_detector", "jobs"] == 2 and out.loc["detect", "gpu_h"] == 0


@pytest.mark.slow
def test_a_run_with_detection_measures_detection_volumes_detect_and_predict(tmp_path):
    """A real Snakemake run (2 small scans, tiny settings) up to predict_all: the per-scan
    detection and prediction stages appear in the table with positive CPU seconds."""
    from workflow_helpers import TINY_PATIENTS, tiny_config

    from lungseg.bench.scale_lidc import detection_volume_costs
    from lungseg.bench.scale_stages import (
        DETECTION_STAGES,
        deep_update,
        measured_stages,
        run_workflow,
        scale_config,
        targets,
    )

    overrides = {k: v for k, v in tiny_config().items() if k != "models"}
    config = scale_config(TINY_PATIENTS, 0, detection_epochs=1, overrides=overrides)
    assert all(d["epochs"] == 1 for d in config["detectors"].values())
    run_workflow(tmp_path, config, targets(0, 1), cores=2, timeout_s=900)
    costs = stage_costs(tmp_path, measured_stages(0, 1)).set_index("stage")
    assert list(costs.index[-len(DETECTION_STAGES) :]) == list(DETECTION_STAGES)
    assert "train" not in costs.index  # trained for the predictor, not measured
    assert (costs.loc[list(DETECTION_STAGES), "cpu_s"] > 0).all()
    assert costs.loc["detection_volume", "jobs"] == 2 and costs.loc["detect", "jobs"] == 2
    assert costs.loc["predict", "jobs"] >= 1 and costs.loc["predict", "disk_mb"] > 0
    assert costs.loc["detect", "wall_s"] > 0  # from its benchmark: files
    # both volume settings on the run's scans (here a 4 mm canvas stands in for lidc.yaml's)
    other = deep_update(config, {"detection": {"volumes": {"spacing": [4.0] * 3}}})
    other["detection"]["volumes"]["shape"] = [88, 80, 96]
    volumes = detection_volume_costs(tmp_path, other, config, count=2)
    assert len(volumes) == 2 and (volumes.drop(columns="volume") > 0).all().all()
    assert (volumes["lidc_mb"] > volumes["sample_mb"]).all()
