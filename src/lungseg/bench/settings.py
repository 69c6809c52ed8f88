"""Settings of the memory benchmark job (rule ``benchmark``)."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.errors import SettingsError
from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class BenchmarkSettings(StageSettings):
    """The ``benchmark:`` keys of the measurement (``threads``, ``runtime_min``: job resources)."""

    SECTIONS = ("benchmark",)
    variants: tuple[str, ...]
    channels: int
    levels: int
    blocks_per_level: int
    sizes: tuple[tuple[int, int, int], ...]
    depth_size: tuple[int, int, int]
    depth_blocks: tuple[int, ...]
    memory_budget_gb: float
    fit_budgets_gb: tuple[float, ...]
    device: str
    steps: int
    point_timeout_s: float

    def check(self) -> None:
        factor = 2 ** (self.levels - 1)
        for key, sizes in (("sizes", self.sizes), ("depth_size", [self.depth_size])):
            bad = [list(size) for size in sizes if any(side % factor for side in size)]
            if bad:
                raise SettingsError(
                    f"benchmark.{key}: {bad} not divisible by 2**(levels-1) = {factor} "
                    f"(benchmark.levels = {self.levels})"
                )
