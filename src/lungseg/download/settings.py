"""Settings of ``lungseg download`` (config section ``download``)."""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class DownloadSettings(StageSettings):
    """Which patients' CT series, from which of IDC's public buckets."""

    SECTIONS = ("download",)
    patients: tuple[str, ...]
    source: str
