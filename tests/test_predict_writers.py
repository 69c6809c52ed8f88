"""`lungseg predict`'s output writers (lungseg.predict.writers): each writes exactly the files it
declares, a disabled one writes nothing and is not timed, and a writer appended to WRITERS is
run by the real pipeline.

The prediction is a real one: a small CT series (tests/dicom_writer.py: a soft-tissue ball in
lung-density noise) and small untrained bundles that keep every detection (tests/scan_helpers.py),
run through ``run_predict`` with a recording writer appended to WRITERS.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from dicom_writer import write_series
from scan_helpers import tiny_bundles

from lungseg.predict import writers
from lungseg.predict.pipeline import OUTPUTS, run_predict
from lungseg.predict.settings import PredictSettings
from lungseg.predict.steps import StepTimes
from lungseg.predict.writers import (
    WRITERS,
    DicomSegWriter,
    SeriesPrediction,
    TablesWriter,
    Writer,
    output_files,
    write_outputs,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "predict.md"
SETTINGS = PredictSettings.from_config({})
#: files whose bytes differ between two writes of the same result (new UIDs, time stamps)
FRESH_UIDS = {"nodules.seg.dcm"}


class Recorder(Writer):
    """Writes nothing; keeps what the pipeline gave the writers."""

    name, files = "recorder", ()

    def __init__(self) -> None:
        self.results: list[SeriesPrediction] = []

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        self.results.append(result)


class Toy(Writer):
    """A new format: the nodule labels, one a line."""

    name, files = "toy", ("labels.txt",)

    def write(self, result: SeriesPrediction, out_dir: Path) -> None:
        (out_dir / "labels.txt").write_text("".join(f"{k}\n" for k in result.label_values))


class SwitchedToy(Toy):
    """A format that settings switch on and off (here: a mask threshold below 0.5)."""

    name = "switched_toy"

    def enabled(self, settings: PredictSettings) -> bool:
        return settings.mask_threshold < 0.5


def predict(tmp: Path, series: Path, bundles: tuple[Path, Path], settings=SETTINGS) -> Path:
    out = tmp / "out"
    detector, segmenter = bundles
    run_predict(
        series_dirs=[str(series)],
        out=str(out),
        detector=str(detector),
        segmenter=str(segmenter),
        settings=settings,
    )
    (folder,) = out.iterdir()
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, tuple[Path, Path]]:
    """A 24 x 64 x 64 CT series with a 12 mm ball; bundles that keep every detection."""
    work = tmp_path_factory.mktemp("writers_input")
    rng = np.random.default_rng(0)
    image = (-850 + rng.integers(0, 30, (24, 64, 64))).astype(np.int16)
    z, y, x = np.ogrid[:24, :64, :64]
    image[((z - 12) * 2.5) ** 2 + ((y - 30) * 0.8) ** 2 + ((x - 34) * 0.8) ** 2 < 36] = 40
    write_series(work / "series", image, step=2.5, pixel_spacing=(0.8, 0.8))
    return work / "series", tiny_bundles(work / "bundles", threshold=0.0)


@pytest.fixture(scope="module")
def predicted(inputs, tmp_path_factory) -> tuple[SeriesPrediction, Path]:
    """(what the writers were given, the folder the pipeline wrote) of one real prediction."""
    recorder = Recorder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "WRITERS", [*WRITERS, recorder])
        folder = predict(tmp_path_factory.mktemp("writers_run"), *inputs)
    (result,) = recorder.results
    assert len(result.nodules) >= 1  # every format has something to write
    return result, folder


def test_the_writers_are_the_outputs_and_each_is_documented():
    names = output_files()
    assert len(set(names)) == len(names)  # no file written by two writers
    assert (*names, "summary.json") == OUTPUTS
    assert len({w.name for w in WRITERS}) == len(WRITERS)
    documented = set(re.findall(r"^\| `([^`]+)` \|", DOCS.read_text(), flags=re.MULTILINE))
    assert set(OUTPUTS) <= documented


def test_the_pipeline_writes_every_output_and_times_write_then_radiomics(predicted):
    result, folder = predicted
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUTS)
    summary = json.loads((folder / "summary.json").read_text())
    steps = [row["step"] for row in summary["steps"]]
    assert steps == ["read", "detect", "segment", "write", "radiomics"]
    assert summary["nodules"] == len(result.nodules) == len(result.probabilities)
    assert result.label_values == list(range(1, len(result.nodules) + 1))
    assert result.labels.shape == result.image.shape


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_a_writer_writes_exactly_its_files_as_the_pipeline_did(writer, predicted, tmp_path):
    result, folder = predicted
    assert writer.files_for(result) == writer.files
    writer.write(result, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writer.files)
    for name in writer.files:
        assert (tmp_path / name).stat().st_size > 0
        if name not in FRESH_UIDS:  # the same result gives the same bytes
            assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.name)
def test_without_nodules_a_writer_writes_what_it_says(writer, predicted, tmp_path):
    result, _ = predicted
    empty = dataclasses.replace(
        result,
        labels=np.zeros_like(result.labels),
        nodules=result.nodules.iloc[:0],
        probabilities=result.probabilities[:0],
    )
    writer.write(empty, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writer.files_for(empty))
    if isinstance(writer, DicomSegWriter):
        assert writer.files_for(empty) == ()  # a Segmentation needs a segment (docs/predict.md)


@pytest.mark.parametrize(("mask_threshold", "enabled"), [(0.4, True), (0.5, False)])
def test_a_writer_disabled_by_the_settings_writes_nothing_and_is_not_timed(
    mask_threshold, enabled, predicted, tmp_path, monkeypatch
):
    result, _ = predicted
    settings = PredictSettings.from_config({"mask_threshold": mask_threshold})
    monkeypatch.setattr(writers, "WRITERS", [TablesWriter(), SwitchedToy()])
    steps = StepTimes()
    write_outputs(result, tmp_path, settings, steps)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["labels.txt", "nodules.csv"] if enabled else ["nodules.csv"])
    assert [row["step"] for row in steps.rows] == ["write"]

    monkeypatch.setattr(writers, "WRITERS", [SwitchedToy()])
    (tmp_path / "alone").mkdir()
    steps = StepTimes()
    write_outputs(result, tmp_path / "alone", settings, steps)
    assert [row["step"] for row in steps.rows] == (["write"] if enabled else [])
    assert len(list((tmp_path / "alone").iterdir())) == int(enabled)


def test_a_writer_appended_to_the_list_is_written_by_the_pipeline(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "WRITERS", [*WRITERS, Toy()])
    folder = predict(tmp_path, *inputs)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*OUTPUTS, "labels.txt"])
    summary = json.loads((folder / "summary.json").read_text())
    labels = [int(line) for line in (folder / "labels.txt").read_text().split()]
    assert labels == list(range(1, summary["nodules"] + 1))
    # the default step: timed with the other files, before radiomics; no new summary row
    steps = [row["step"] for row in summary["steps"]]
    assert steps == ["read", "detect", "segment", "write", "radiomics"]
