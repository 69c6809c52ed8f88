"""Ingestion benchmarks (not timed tests): HDF5 codecs, conversion throughput, DAG build time.

    python -m lungseg.bench.ingest codecs SERIES_FOLDER
    python -m lungseg.bench.ingest throughput SERIES_FOLDER
    python -m lungseg.bench.ingest dag --n-series 1018

Figures go to stdout as a Markdown table (and ``--out`` as CSV); docs/ingestion.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pydicom

from lungseg.bench.allocator import KEEP_FREED_BUFFERS, child_environment
from lungseg.core.settings import schema_defaults
from lungseg.ingest.dicom import iter_files
from lungseg.ingest.pixels import SPACING_TOLERANCE, read_series
from lungseg.io.hdf5 import COMPRESSIONS, DEFAULT_VOLUME_COMPRESSION, write_volume

REPO = Path(__file__).resolve().parents[3]  # the checkout: benchmark_dag needs its workflow
#: (name, codec, level) compared by ``codecs``
CODECS = [
    ("none", "none", None),
    ("blosc-lz4-1", "blosc-lz4", 1),
    ("lzf+shuffle", "lzf", None),
    ("gzip-1+shuffle", "gzip", 1),
    ("gzip-4+shuffle", "gzip", 4),
    ("blosc-zstd-1", "blosc-zstd", 1),
    ("blosc-zstd-3", "blosc-zstd", 3),
    ("blosc-zstd-5", "blosc-zstd", 5),
]

#: The annotations' consensus level of the benchmark: the schema's ingest.consensus_level.
LEVEL: float = schema_defaults("ingest")["consensus_level"]


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _best_of(repeats: int, func, setup=None) -> float:
    """Fewest CPU seconds of this process over ``repeats`` calls (``setup`` runs untimed first).

    CPU time, not wall time: it is what "per core" means, and it stays meaningful on a shared,
    busy machine (files are in the page cache after the first call, so I/O waits are small).
    """
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.process_time()
        func()
        times.append(time.process_time() - start)
    return min(times)


def benchmark_codecs(series_folder: Path, repeats: int = 3) -> pd.DataFrame:
    """Write/read time and size of one real-shaped volume (image + empty-ish mask) per codec."""
    _, image = read_series(sorted(iter_files(series_folder)))
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[image.shape[0] // 2, 200:220, 200:220] = 1
    raw_mb = (image.nbytes + mask.nbytes) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, codec, level in CODECS:
            path = Path(tmp) / f"{name}.h5"
            write_s = _best_of(
                repeats,
                lambda c=codec, lv=level, p=path: write_volume(p, image, mask, {}, c, lv),
                setup=lambda p=path: p.unlink(missing_ok=True),  # a new file, as in a job
            )

            def read(p=path):
                with h5py.File(p, "r") as f:
                    f["image"][...]
                    f["mask"][...]

            read_s = _best_of(repeats, read)
            crop_s = _best_of(repeats, lambda p=path: _read_crops(p, image.shape))
            size_mb = path.stat().st_size / 1e6
            rows.append(
                {
                    "codec": name,
                    "ratio": round(raw_mb / size_mb, 2),
                    "size_MB": round(size_mb, 1),
                    "write_MB/s": round(raw_mb / write_s, 1),
                    "read_MB/s": round(raw_mb / read_s, 1),
                    "10_crops_64^3_ms": round(crop_s * 1000, 1),
                }
            )
    return pd.DataFrame(rows)


def _read_crops(path: Path, shape: tuple[int, int, int], n: int = 10, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "r") as f:
        for _ in range(n):
            z, y, x = (int(rng.integers(0, max(1, s - size))) for s in shape)
            f["image"][z : z + size, y : y + size, x : x + size]


def _raw_read(paths: list[str]) -> int:
    return sum(pydicom.dcmread(path).pixel_array.nbytes for path in paths)


#: rows of the throughput table: key in the child's report -> what was timed
THROUGHPUT_ROWS = {
    "raw_s": "pydicom dcmread + pixel_array (the reference)",
    "read_s": "read_series (pydicom + HU + ordering)",
    "nodules_s": "paint_nodules (from annotations.h5)",
    "write_s": "write_volume (HDF5, atomic)",
    "total_s": "convert_series (read + nodules + write + tables)",
    "annotations_s": "annotations step, this series (pylidc clusters + consensus masks)",
}

#: a whole `lungseg convert` job in a fresh interpreter; prints its peak RSS (VmHWM, kB)
_JOB = (
    "import sys; from lungseg.cli import main; rc = main(sys.argv[1:]); "
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); "
    "sys.exit(rc)"
)


#: glibc settings of the timing child: freed pixel buffers stay in the heap for the next file.
#: By default glibc hands each of pydicom's 512 KB buffers back to the system and faults in
#: fresh pages for the next one (about 220 page faults a file; the reference read then takes
#: ~1.6x as long and varies with what else the process imported). With these, the reference
#: is pydicom at its fastest and steady; the conversion allocates its volume once either way.
REFERENCE_MALLOC_TUNABLES = KEEP_FREED_BUFFERS


def benchmark_throughput(
    series_folder: Path, repeats: int = 5, compression: str = DEFAULT_VOLUME_COMPRESSION
) -> pd.DataFrame:
    """MB of DICOM per CPU second on one core: pydicom alone vs the parts of ``convert``.

    All parts are timed in one child process (one core, like a Snakemake job), interleaved
    round by round and best of ``repeats``, so that the load of a shared machine hits the
    reference and the conversion alike; glibc there keeps freed buffers for reuse
    (:data:`REFERENCE_MALLOC_TUNABLES`), which helps the reference most. Nodules come from an
    annotation file as in the workflow; making this series' share of that file (pylidc) is
    timed on its own row. A whole ``lungseg convert`` job (imports included) is then run as the
    workflow runs it, for its CPU time and peak resident memory (``attrs``).
    """
    paths = sorted(iter_files(series_folder))
    dicom_mb = sum(os.path.getsize(p) for p in paths) / 1e6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BLOSC_NTHREADS": "1"}
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "lungseg.bench.ingest",
            "_convert",
            str(series_folder),
            "--repeats",
            str(repeats),
            "--compression",
            compression,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
        env=child_environment(REFERENCE_MALLOC_TUNABLES, env),
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    frame = pd.DataFrame(
        [{"what": what, "seconds": result[key]} for key, what in THROUGHPUT_ROWS.items()]
    )
    frame["MB/s"] = (dicom_mb / frame["seconds"]).round(1)
    frame["vs_pydicom"] = (result["raw_s"] / frame["seconds"]).map("{:.0%}".format)
    frame["seconds"] = frame["seconds"].round(3)
    job_cpu_s, job_peak_mb = _convert_job(paths, compression, env)
    frame.attrs.update(
        dicom_mb=round(dicom_mb, 1),
        n_files=len(paths),
        shape=result["shape"],
        convert_job_cpu_s=round(job_cpu_s, 2),
        convert_job_peak_rss_mb=job_peak_mb,
        convert_job_imports_cpu_s=round(startup_cpu_seconds("lungseg.ingest.convert"), 2),
        pylidc_import_cpu_s=round(startup_cpu_seconds("lungseg.lidc.adapter"), 2),
    )
    return frame


def _convert_job(paths: list[str], compression: str, env: dict) -> tuple[float, int]:
    """CPU seconds and peak RSS (MB) of one ``lungseg convert`` job as the workflow runs it."""
    from lungseg.ingest.dicom import read_header
    from lungseg.lidc import adapter as lidc
    from lungseg.lidc.annotations import write_annotations

    series_uid = read_header(paths[0]).series_uid
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        pd.DataFrame({"series_uid": series_uid, "path": paths}).to_csv(
            out / "files.csv", index=False
        )
        write_annotations(out / "a.h5", [lidc.series_annotations(series_uid, LEVEL)], LEVEL)
        argv = [
            "convert", "--files", str(out / "files.csv"), "--series_uid", series_uid,
            "--patient_id", "bench", "--status", str(out / "v.status.csv"),
            "--volume", str(out / "v.h5"), "--nodules", str(out / "v.csv"),
            "--annotations", str(out / "a.h5"), "--compression", compression,
        ]  # fmt: skip
        before = _children_cpu()
        job = subprocess.run(
            [sys.executable, "-c", _JOB, *argv], capture_output=True, text=True, env=env
        )
        cpu = _children_cpu() - before
    if job.returncode != 0:
        raise RuntimeError(f"convert job failed:\n{job.stderr[-3000:]}")
    return cpu, int(job.stdout.split()[-1]) // 1024


def _convert_child(series_folder: Path, repeats: int, compression: str) -> None:
    """Child process of :func:`benchmark_throughput`: interleaved timings, best of each."""
    from lungseg.ingest.convert import convert_series, paint_nodules
    from lungseg.lidc import adapter as lidc  # import cost is not conversion time
    from lungseg.lidc.annotations import write_annotations

    paths = sorted(iter_files(series_folder))
    _raw_read(paths)  # warm the page cache
    plan, image = read_series(paths)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stored = out / "annotations.h5"

        def annotate() -> None:
            write_annotations(stored, [lidc.series_annotations(plan.series_uid, LEVEL)], LEVEL)

        annotate()
        mask, _ = paint_nodules(plan, stored, None)
        parts = {
            "raw_s": lambda: _raw_read(paths),
            "read_s": lambda: read_series(paths),
            "nodules_s": lambda: paint_nodules(plan, stored, None),
            "write_s": lambda: write_volume(out / "w.h5", image, mask, {}, compression),
            "total_s": lambda: convert_series(
                paths,
                out / "v.h5",
                out / "v.csv",
                annotations=stored,
                consensus_level=None,  # the file's
                compression=compression,
                spacing_tolerance=SPACING_TOLERANCE,
            ),
            "annotations_s": annotate,
        }
        best = dict.fromkeys(parts, float("inf"))
        for _ in range(repeats):
            for key, func in parts.items():
                best[key] = min(best[key], _best_of(1, func))
                # As in the workflow, where Snakemake removes a job's old outputs before it
                # runs: renaming onto an old 30 MB file would time freeing its page cache.
                for name in ("w.h5", "v.h5", "v.csv"):
                    (out / name).unlink(missing_ok=True)
    print(json.dumps({**best, "shape": [plan.n_slices, plan.rows, plan.columns]}))


def startup_cpu_seconds(module: str, repeats: int = 3) -> float:
    """Fewest CPU seconds of a fresh interpreter importing ``module`` (a job's fixed cost)."""
    times = []
    for _ in range(repeats):
        before = _children_cpu()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(_children_cpu() - before)
    return min(times)


def fake_index(out_dir: Path, n_series: int, slices: int = 200) -> None:
    """A ``series.csv``/``files.csv`` pair shaped like the full collection (no DICOM files)."""
    rng = np.random.default_rng(0)
    rows, files = [], []
    for i in range(n_series):
        uid = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{rng.integers(10**11, 10**12)}{i:04d}"
        patient = f"LIDC-IDRI-{i % 1010 + 1:04d}"
        rows.append(
            {
                "patient_id": patient,
                "study_uid": uid + ".1",
                "series_uid": uid,
                "modality": "CT",
                "n_files": slices,
                "n_slices": slices,
                "status": "ok",
                "reason": "",
                "slice_thickness": 2.5,
                "slice_spacing": 2.5,
                "rows": 512,
                "columns": 512,
                "annotated": True,
            }
        )
        files.extend((uid, f"/data/{patient}/{uid}/1-{k:03d}.dcm") for k in range(1, slices + 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out_dir / "series.csv", index=False)
    pd.DataFrame(files, columns=["series_uid", "path"]).to_csv(out_dir / "files.csv", index=False)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def benchmark_dag(n_series: int = 1018, repeats: int = 2) -> pd.DataFrame:
    """Time of ``snakemake -n volumes`` over a generated index of ``n_series`` series, and of
    ``snakemake --version`` (the fixed cost of starting Snakemake) for comparison."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in ("Snakefile", "rules", "workflow_scripts", "envs", "config.yaml"):
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, work / name)
            elif source.exists():
                shutil.copy2(source, work / name)
        raw = work / "raw"
        raw.mkdir()
        fake_index(work / "results" / "index", n_series)
        command = [
            sys.executable, "-m", "snakemake", "-n", "volumes", "--cores", "1", "--quiet", "rules",
            "--workflow-profile", "none", "--config", f"lidc_root={raw}",
        ]  # fmt: skip
        cpu_start = _children_cpu()
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True)
        startup_cpu = _children_cpu() - cpu_start
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), _children_cpu()
            result = subprocess.run(command, cwd=work, capture_output=True, text=True)
            seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
            if result.returncode != 0:
                raise RuntimeError(result.stderr[-3000:])
            rows.append(
                {
                    "n_series": n_series,
                    "wall_s": round(seconds, 1),
                    "cpu_s": round(cpu, 1),
                    "of which snakemake start-up cpu_s": round(startup_cpu, 1),
                }
            )
            jobs = dict(
                line.split()[:2]
                for line in (result.stdout + result.stderr).splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit()
            )
            rows[-1]["convert jobs"] = jobs.get("convert", "0")
            rows[-1]["index jobs"] = jobs.get("index", "0")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lungseg.bench.ingest", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("codecs", "throughput", "_convert"):
        p = sub.add_parser(name)
        p.add_argument("series_folder", type=Path, help="folder with one DICOM series")
        p.add_argument("--repeats", type=int, default=5 if name != "codecs" else 3)
        p.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_VOLUME_COMPRESSION)
        p.add_argument("--out", type=Path, help="also write the table as CSV")
    p = sub.add_parser("dag")
    p.add_argument("--n-series", type=int, default=1018)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    if args.what == "_convert":
        _convert_child(args.series_folder, args.repeats, args.compression)
        return 0
    if args.what == "codecs":
        frame = benchmark_codecs(args.series_folder, args.repeats)
    elif args.what == "throughput":
        frame = benchmark_throughput(args.series_folder, args.repeats, args.compression)
    else:
        frame = benchmark_dag(args.n_series, args.repeats)
    print(_markdown(frame))
    if frame.attrs:
        print(json.dumps(frame.attrs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
