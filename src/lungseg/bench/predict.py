"""``lungseg bench-predict``: wall time and peak memory of ``lungseg predict``, by step.

Runs the prediction of one series in this process (``threads`` torch threads) into a temporary
folder, then writes the steps of its summary.json (read, detect, segment, write, radiomics:
seconds and the process's peak RSS during the step) as a table and a figure
(docs/predict.md reproduces the sample figure with this command).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from lungseg.core.atomic import atomic_path, write_csv_atomic
from lungseg.core.style import DPI
from lungseg.predict.pipeline import run_predict
from lungseg.predict.settings import PredictSettings


def steps_figure(steps: pd.DataFrame, title: str) -> Figure:
    figure = Figure(figsize=(8, 3.2), dpi=DPI, layout="constrained")
    seconds, memory = figure.subplots(1, 2)
    seconds.barh(steps["step"], steps["seconds"], color="tab:blue")
    seconds.invert_yaxis()
    seconds.set_xlabel("wall seconds")
    seconds.set_title(f"{steps['seconds'].sum():.1f} s in all")
    memory.barh(steps["step"], steps["peak_rss_mb"], color="tab:orange")
    memory.invert_yaxis()
    memory.set_xlabel("peak RSS of the process (MB)")
    memory.set_title(f"peak {steps['peak_rss_mb'].max():.0f} MB")
    for axes in (seconds, memory):
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle(title, fontsize=9)
    return figure


def run_bench_predict(
    *,
    series_dir: str,
    detector: str,
    segmenter: str,
    table: str,
    figure: str,
    settings: PredictSettings,
    threads: int = 2,
) -> None:
    """Predict one series and record each step's wall time and peak memory."""
    with tempfile.TemporaryDirectory() as out:
        run_predict(
            series_dirs=[series_dir],
            out=out,
            detector=detector,
            segmenter=segmenter,
            settings=settings,
            threads=threads,
        )
        (summary_file,) = Path(out).glob("*/summary.json")
        summary = json.loads(summary_file.read_text())
    steps = pd.DataFrame(summary["steps"])
    steps.insert(0, "threads", threads)
    steps.insert(0, "shape", "x".join(map(str, summary["shape"])))
    steps["nodules"] = summary["nodules"]
    write_csv_atomic(table, steps)
    shape = " x ".join(map(str, summary["shape"][::-1]))
    title = (
        f"lungseg predict, one {shape} series, {summary['nodules']} nodule(s), {threads} thread(s)"
    )
    with atomic_path(figure) as tmp:
        steps_figure(steps, title).savefig(tmp, format="png")
