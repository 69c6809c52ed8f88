"""The output formats of ``lungseg predict``: one writer per format, listed in WRITERS.

A writer has a ``name``, the ``files`` it writes into a series' folder (their names and columns
are the public interface, docs/predict.md), the ``step`` of summary.json it is timed under, an
``enabled(settings)`` test and ``write(result, out_dir)``, where ``result`` is the one
:class:`SeriesPrediction` of a series (image and geometry, label map, nodule table, detector
probabilities, source series). :func:`write_outputs` runs the enabled writers of
:data:`WRITERS`, a step at a time (steps in the order they first appear, writers in list order),
each step one row of summary.json (``write``, then ``radiomics``). A new format is a
:class:`Writer` subclass appended to :data:`WRITERS` (docs/predict.md, "Adding an output
format").
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.predict.dicomseg import write_dicom_seg
from lungseg.predict.nifti import write_nifti
from lungseg.predict.overview import plot_overview
from lungseg.predict.radiomics import extract_features
from lungseg.predict.series import Scan
from lungseg.predict.settings import PredictSettings
from lungseg.predict.steps import StepTimes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesPrediction:
    """What the prediction of one series produced: everything a writer may write."""

    scan: Scan  # the series read: HU image (z, y, x), its geometry and source files
    labels: np.ndarray  # label map on the scan grid: 0 background, k = nodules.csv label k
    nodules: pd.DataFrame  # nodules.csv (lungseg.predict.measure.COLUMNS)
    probabilities: np.ndarray  # the detector's probability of label k at [k - 1]
    radiomics_params: Path  # the resolved pyradiomics parameter file

    @property
    def image(self) -> np.ndarray:
        return self.scan.image

    @property
    def geometry(self) -> tuple:
        """(spacing, origin, direction) of the scan grid (z, y, x order, DICOM patient frame)."""
        return self.scan.spacing, self.scan.origin, self.scan.direction

    @property
    def label_values(self) -> list[int]:
        """The labels of the nodules, in nodules.csv order."""
        return [int(k) for k in self.nodules["label"]]

    @property
    def source_files(self) -> list[str]:
        """The source CT slices in the label map's z order."""
        return self.scan.series.paths

    @property
    def title(self) -> str:
        return f"{self.scan.plan.patient_id}  {self.scan.plan.series_uid}"


class Writer:
    """One output format. Subclasses set ``name`` and ``files`` and define :meth:`write`."""

    name: ClassVar[str]
    files: ClassVar[tuple[str, ...]]  # every file this writer can write, by name
    step: ClassVar[str] = "write"  # the summary.json step it is timed under

    def enabled(self, settings: PredictSettings) -> bool:
        """Whether ``settings`` ask for this format (every built-in format: always)."""
        return True

    def files_for(self, result: SeriesPrediction) -> tuple[str, ...]:
        """The files :meth:`write` writes for ``result`` (all of ``files`` unless overridden)."""
        return self.files

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<writer {self.name}: {', '.join(self.files)}>"


class TablesWriter(Writer):
    """nodules.csv: one row per nodule (lungseg.predict.measure)."""

    name, files = "tables", ("nodules.csv",)

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        write_csv_atomic(out_dir / "nodules.csv", result.nodules)


class NiftiWriter(Writer):
    """image.nii.gz (HU, int16) and nodules.nii.gz (uint8 label map, uint16 beyond 255)."""

    name, files = "nifti", ("image.nii.gz", "nodules.nii.gz")

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        write_nifti(out_dir / "image.nii.gz", result.image, *result.geometry)
        labels = result.labels
        stored = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
        write_nifti(out_dir / "nodules.nii.gz", stored, *result.geometry)


class DicomSegWriter(Writer):
    """nodules.seg.dcm on the source CT; none without nodules (a SEG needs a segment)."""

    name, files = "dicom_seg", ("nodules.seg.dcm",)

    def files_for(self, result: SeriesPrediction) -> tuple[str, ...]:
        return self.files if len(result.nodules) else ()

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        segments = [(k, f"nodule {k}") for k in result.label_values]
        write_dicom_seg(out_dir / "nodules.seg.dcm", result.labels, result.source_files, segments)


class OverviewWriter(Writer):
    """overview.png: coronal MIP with numbered markers, an axial slice through each nodule."""

    name, files = "overview", ("overview.png",)

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        plot_overview(
            out_dir / "overview.png",
            result.image,
            result.labels,
            result.nodules,
            result.scan.spacing,
            result.title,
        )


class RadiomicsWriter(Writer):
    """radiomics.csv: pyradiomics features per nodule (its own step: the extraction)."""

    name, files, step = "radiomics", ("radiomics.csv",), "radiomics"

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        features = extract_features(
            result.image,
            result.labels,
            *result.geometry,
            result.label_values,
            result.radiomics_params,
        )
        write_csv_atomic(out_dir / "radiomics.csv", features)


#: the formats ``lungseg predict`` writes, in this order (summary.json's write, then radiomics)
WRITERS: list[Writer] = [
    TablesWriter(),
    NiftiWriter(),
    DicomSegWriter(),
    OverviewWriter(),
    RadiomicsWriter(),
]


def output_files(writers: list[Writer] | None = None) -> tuple[str, ...]:
    """Every file name the writers (default: :data:`WRITERS`) can write, in their order."""
    chosen = WRITERS if writers is None else writers
    return tuple(name for writer in chosen for name in writer.files)


def write_outputs(
    result: SeriesPrediction, out_dir: Path, settings: PredictSettings, steps: StepTimes
) -> None:
    """Run every writer of :data:`WRITERS` that ``settings`` enable into ``out_dir``.

    One row of ``steps`` per step, in the order the steps first appear in the list; the writers
    of a step run in list order (a writer appended with the default step joins ``write``, which
    runs before ``radiomics``). A writer's own seconds are logged (debug); a disabled writer is
    neither run nor timed.
    """
    enabled = [writer for writer in WRITERS if writer.enabled(settings)]
    for step in dict.fromkeys(writer.step for writer in enabled):
        with steps(step):
            for writer in (w for w in enabled if w.step == step):
                start = time.perf_counter()
                writer.write(result, out_dir)
                logger.debug("%s: %.3f s", writer.name, time.perf_counter() - start)
