"""Whole-scan nodule detection: detection volumes, detectors, candidates.

Modules: :mod:`.settings` (config checks; no torch), :mod:`.volumes` (per-scan detection
volumes), :mod:`.scans` (the scan table and split), :mod:`.candidates` (probability map ->
candidates), :mod:`.train` (detector training), :mod:`.predict` (inference and candidates.csv).
Scoring (LUNA16's FROC and CPM, froc.csv, detection.csv) is in :mod:`lungseg.evaluation.froc`
and :mod:`lungseg.evaluation.detection`, the figures in :mod:`lungseg.figures.detection`, the
seed bench in :mod:`lungseg.bench.detection`. Documented in docs/detection.md.
"""

from lungseg.detection.settings import check_detection_config

__all__ = ["check_detection_config"]
