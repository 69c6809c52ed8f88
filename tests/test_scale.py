"""Scale benchmark: per-stage costs from Snakemake benchmark files, growth exponents, figure."""

from __future__ import annotations

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
