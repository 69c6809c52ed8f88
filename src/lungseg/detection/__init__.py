"""Whole-scan nodule detection: detection volumes, detectors, candidates, LUNA16 FROC and CPM.

Modules: :mod:`.settings` (config checks; no torch), :mod:`.volumes` (per-scan detection
volumes), :mod:`.scans` (the scan table and split), :mod:`.froc` (LUNA16's FROC/CPM),
:mod:`.candidates` (probability map -> candidates), :mod:`.train` (detector training),
:mod:`.predict` (inference and candidates.csv), :mod:`.evaluate` (froc.csv, detection.csv),
:mod:`.figures`. Documented in docs/detection.md.
"""

from lungseg.detection.settings import check_detection_config

__all__ = ["check_detection_config"]
