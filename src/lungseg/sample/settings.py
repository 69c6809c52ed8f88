"""Settings of the sample-data jobs."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class SampleSettings(StageSettings):
    """Rule ``sample_data``: the seed of the synthetic intensities."""

    SECTIONS = ("sample_data",)
    seed: int
