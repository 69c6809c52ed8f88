"""Settings of the figure jobs."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class ExamplesSettings(StageSettings):
    """Rule ``plot_examples``: how many validation nodules are shown."""

    SECTIONS = ("plots",)
    examples: int
