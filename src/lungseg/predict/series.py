"""The CT series ``lungseg predict`` is given: found in folders, checked before anything is written.

Any layout works (LIDC's, a PACS export, one flat folder per series): files are grouped by
SeriesInstanceUID with lungseg's DICOM reader (its quirk handling applies). Every series is
checked first, and one problem stops the command before it writes anything: a folder that is not
there or holds no DICOM image, a series that is not CT, has fewer than three slices, mixed
matrix sizes, missing or irregular slice positions (the NIfTI and DICOM-SEG grids assume even
spacing), or a folder whose files belong to several series (the outputs are one result per
series: give each series its own folder).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungseg.core.errors import InputError
from lungseg.ingest.dicom import SliceHeader, scan_folder
from lungseg.ingest.pixels import read_series
from lungseg.ingest.series import STATUS_OK, SeriesPlan, group_by_series, plan_series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesInput:
    """One CT series to predict: where its files are and the reader's plan of it."""

    folder: Path
    plan: SeriesPlan

    @property
    def series_uid(self) -> str:
        return self.plan.series_uid

    @property
    def paths(self) -> list[str]:
        return [h.path for h in self.plan.slices]


@dataclass
class Scan:
    """A CT series read into memory: int16 HU ``(z, y, x)`` and its patient geometry."""

    series: SeriesInput
    image: np.ndarray

    @property
    def plan(self) -> SeriesPlan:
        return self.series.plan

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.plan.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.plan.origin

    @property
    def direction(self) -> tuple[float, ...]:
        return self.plan.direction


def _common_folder(headers: Sequence[SliceHeader]) -> Path:
    parents = {Path(h.path).parent for h in headers}
    if len(parents) == 1:
        return parents.pop()
    return Path(*Path(headers[0].path).parent.parts[: _common_depth(parents)])


def _common_depth(folders) -> int:
    parts = [f.parts for f in folders]
    depth = 0
    while all(len(p) > depth and p[depth] == parts[0][depth] for p in parts):
        depth += 1
    return depth


def series_problem(plan: SeriesPlan) -> str:
    """Why ``lungseg predict`` cannot take this series, or ""."""
    if plan.status == STATUS_OK:
        return ""
    return plan.reason or plan.status


def find_series(folders: Sequence[str | Path], spacing_tolerance: float) -> list[SeriesInput]:
    """Every CT series under ``folders``, checked; :class:`InputError` names the first problem."""
    if not folders:
        raise InputError("no series folder given")
    found: list[SeriesInput] = []
    seen: dict[str, Path] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            what = "not found" if not folder.exists() else "a file, not a folder of DICOM files"
            raise InputError(f"{folder}: series folder {what}")
        headers, problems, unreadable = scan_folder(folder)
        for path, error in unreadable:
            raise InputError(f"{folder}: cannot read folder {path}: {error}")
        for problem in problems:
            logger.warning("%s: skipped a file that is no DICOM image: %s", folder, problem)
        if not headers:
            why = f" ({problems[0]})" if problems else ""
            raise InputError(f"{folder}: no DICOM files found{why}")
        by_folder: dict[Path, set[str]] = defaultdict(set)
        for header in headers:
            by_folder[Path(header.path).parent].add(header.series_uid)
        for where, uids in sorted(by_folder.items()):
            if len(uids) > 1:
                raise InputError(
                    f"{where}: files of {len(uids)} series mixed in one folder "
                    f"({', '.join(sorted(uids))}); lungseg predict writes one result per "
                    "series: give each series its own folder"
                )
        for uid, members in sorted(group_by_series(headers).items()):
            where = _common_folder(members)
            if uid in seen:
                raise InputError(f"series {uid} found twice: in {seen[uid]} and in {where}")
            plan = plan_series(members, spacing_tolerance)
            problem = series_problem(plan)
            if problem:
                raise InputError(f"{where}: series {uid} cannot be predicted: {problem}")
            seen[uid] = where
            found.append(SeriesInput(where, plan))
    return found


def read_scan(series: SeriesInput, spacing_tolerance: float) -> Scan:
    """The series' pixels in HU (lungseg's reader: one volume of memory at the peak)."""
    plan, image = read_series(series.paths, spacing_tolerance)
    if image is None or series_problem(plan):
        raise InputError(f"{series.folder}: series {series.series_uid}: {series_problem(plan)}")
    return Scan(SeriesInput(series.folder, plan), image)
