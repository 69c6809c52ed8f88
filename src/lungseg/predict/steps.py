"""Wall time and peak memory of each step of a prediction (summary.json; the benchmark's figure)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil


@dataclass
class StepTimes:
    """``with steps("detect"): ...`` records wall seconds and the process's peak RSS (MB)."""

    interval_s: float = 0.02
    rows: list[dict] = field(default_factory=list)

    @contextmanager
    def __call__(self, name: str):
        process = psutil.Process()
        peak = [process.memory_info().rss]
        done = threading.Event()

        def sample() -> None:  # RSS sampled every interval_s: ru_maxrss only ever grows
            while not done.wait(self.interval_s):
                peak[0] = max(peak[0], process.memory_info().rss)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            done.set()
            watcher.join()
            peak[0] = max(peak[0], process.memory_info().rss)
            self.rows.append(
                {"step": name, "seconds": round(seconds, 3), "peak_rss_mb": peak[0] / 2**20}
            )
