"""One series' headers -> a plan: status (``ok`` / ``excluded`` / ``skipped``), reason, slices.

:func:`plan_series` is the one place that decides; the index and the conversion both call it,
so they cannot disagree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungseg.ingest.dicom import SliceHeader
from lungseg.ingest.status import STATUS_EXCLUDED, STATUS_OK, STATUS_SKIPPED, spacing_problem

#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A series needs this many distinct slice positions to form a volume.
MIN_SLICES = 3


def group_by_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Headers by SeriesInstanceUID (insertion order of first appearance)."""
    groups: dict[str, list[SliceHeader]] = defaultdict(list)
    for header in headers:
        groups[header.series_uid].append(header)
    return dict(groups)


@dataclass
class SeriesPlan:
    """The decision for one series and, when usable, its slices in volume order."""

    series_uid: str
    patient_id: str
    study_uid: str
    modality: str
    n_files: int
    status: str = STATUS_OK
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # handled quirks (ok series)
    slices: list[SliceHeader] = field(default_factory=list)  # kept, z ascending
    z_positions: list[float] = field(default_factory=list)  # along the normal, mm
    spacing: tuple[float, float, float] | None = None  # (z, y, x) mm
    origin: tuple[float, float, float] | None = None  # voxel [0,0,0], patient (z, y, x) mm
    direction: tuple[float, ...] | None = None  # rows: array axes z, y, x in patient (z, y, x)
    slice_thickness: float | None = None
    rows: int = 0
    columns: int = 0
    transfer_syntaxes: tuple[str, ...] = ()

    @property
    def n_slices(self) -> int:
        return len(self.slices)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons + self.notes)

    def skip(self, reason: str) -> SeriesPlan:
        self.status = STATUS_SKIPPED
        self.reasons.append(reason)
        self.slices, self.z_positions = [], []
        return self


def _describe_counts(counter: Counter, unit: str = "files") -> str:
    return ", ".join(f"{value} ({n} {unit})" for value, n in counter.most_common())


def _single(values: list, what: str, plan: SeriesPlan) -> bool:
    """True when all values agree; otherwise marks the plan skipped with a reason."""
    counts = Counter(values)
    if len(counts) > 1:
        plan.skip(f"mixed {what}: {_describe_counts(counts)}")
        return False
    return True


def plan_series(headers: list[SliceHeader], spacing_tolerance: float) -> SeriesPlan:
    """Decide what to do with one series and order its slices.

    - non-CT modality (CR, DX, ...) -> skipped; localizer images (ImageType LOCALIZER) dropped;
    - mixed matrix size, pixel spacing or orientation, missing position -> skipped;
    - a slice file shorter than its pixel data or without them (``pixel_problem``) -> skipped,
      the file named;
    - duplicate slice positions -> one kept (lowest InstanceNumber, then path), noted;
    - missing slices or irregular spacing (deviation from the median spacing above
      ``spacing_tolerance`` as a fraction) -> excluded, with the reason; the volume uses the
      median spacing.
    """
    if not headers:
        raise ValueError("plan_series needs at least one header")
    first = headers[0]
    plan = SeriesPlan(
        series_uid=first.series_uid,
        patient_id=first.patient_id,
        study_uid=first.study_uid,
        modality=Counter(h.modality for h in headers).most_common(1)[0][0],
        n_files=len(headers),
    )
    if not _single([h.patient_id for h in headers], "PatientID", plan):
        return plan
    if plan.modality != "CT" or not _single([h.modality for h in headers], "modality", plan):
        return plan.skip(f"modality {plan.modality or 'missing'}, not CT")
    images = [h for h in headers if not h.is_localizer]
    if len(images) < len(headers):
        plan.notes.append(f"dropped {len(headers) - len(images)} localizer image(s)")
    if len(images) < MIN_SLICES:
        return plan.skip(f"only {len(images)} CT image(s), need {MIN_SLICES}")
    unplaced = [h for h in images if h.position is None or h.orientation is None]
    if unplaced:
        return plan.skip(
            f"{len(unplaced)} image(s) without ImagePositionPatient/ImageOrientationPatient, "
            f"e.g. {Path(unplaced[0].path).name}"
        )
    if not _single([f"{h.rows}x{h.columns}" for h in images], "matrix sizes", plan):
        return plan
    if not _single([h.pixel_spacing for h in images], "pixel spacings", plan):
        return plan
    orientations = [tuple(round(v, 4) for v in h.orientation) for h in images]
    if not _single(orientations, "orientations", plan):
        return plan

    row_dir = np.array(images[0].orientation[:3])
    col_dir = np.array(images[0].orientation[3:])
    normal = np.cross(row_dir, col_dir)
    along = np.array([float(np.dot(normal, h.position)) for h in images])
    numbers = [h.instance_number if h.instance_number is not None else 1 << 30 for h in images]
    order = sorted(range(len(images)), key=lambda i: (along[i], numbers[i], images[i].path))

    kept: list[int] = []
    for i in order:
        if kept and abs(along[i] - along[kept[-1]]) < DUPLICATE_TOLERANCE_MM:
            continue
        kept.append(i)
    if len(kept) < len(order):
        plan.notes.append(f"dropped {len(order) - len(kept)} image(s) at duplicate positions")
    if len(kept) < MIN_SLICES:
        return plan.skip(f"only {len(kept)} distinct slice positions, need {MIN_SLICES}")

    broken = [images[i] for i in kept if images[i].pixel_problem]
    if broken:
        more = f" (and {len(broken) - 1} more file(s))" if len(broken) > 1 else ""
        return plan.skip(f"{broken[0].path}: {broken[0].pixel_problem}{more}")
    plan.slices = [images[i] for i in kept]
    plan.z_positions = [float(along[i]) for i in kept]
    step = float(np.median(np.diff(plan.z_positions)))
    problem = spacing_problem(plan.z_positions, spacing_tolerance)
    if problem:
        plan.reasons.append(problem)
        plan.status = STATUS_EXCLUDED

    first_slice = plan.slices[0]
    pixel_spacing = first_slice.pixel_spacing or (1.0, 1.0)
    plan.spacing = (step, float(pixel_spacing[0]), float(pixel_spacing[1]))
    x, y, z = first_slice.position
    plan.origin = (z, y, x)
    # Array axis (z, y, x) -> unit vectors in patient (z, y, x): normal, column dir, row dir.
    axes = [normal, col_dir, row_dir]
    plan.direction = tuple(float(v) for axis in axes for v in axis[::-1])
    thicknesses = [h.slice_thickness for h in plan.slices if h.slice_thickness is not None]
    plan.slice_thickness = float(np.median(thicknesses)) if thicknesses else step
    plan.rows, plan.columns = first_slice.rows, first_slice.columns
    plan.transfer_syntaxes = tuple(sorted({h.transfer_syntax for h in plan.slices}))
    return plan
