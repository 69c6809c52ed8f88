"""``lungseg bench-unseen`` scores ``lungseg predict`` on other scans as rule ``cascade`` scores
the validation scans: run on the validation series' own DICOM folders with the workflow's
predictor, it must find exactly the nodules the workflow's cascade.csv found."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_helpers import finished_local_run

from lungseg.bench.unseen import bench_unseen
from lungseg.core.errors import InputError
from lungseg.evaluation.settings import BucketSettings
from lungseg.predict.settings import PredictSettings


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample_lidc) -> Path:
    return finished_local_run(tmp_path_factory, sample_lidc.lidc_root)


def series_folders(run: Path) -> list[str]:
    """The DICOM folder of every series the workflow predicted (its validation scans)."""
    files = pd.read_csv(run / "results/index/files.csv")
    predicted = {p.name for p in (run / "results/predictions").iterdir()}
    own = files[files["series_uid"].isin(predicted)]
    return sorted({str(run / Path(p).parent) for p in own["path"]})


@pytest.mark.slow  # the finished tiny workflow run, then predict on its validation scans
def test_bench_unseen_matches_the_workflows_cascade(run, tmp_path):
    config = yaml.safe_load((run / "config.yaml").read_text())
    bench_unseen(
        series_dirs=series_folders(run),
        nodules=str(run / "results/nodules.csv"),
        volumes=str(run / "results/volumes"),
        out=str(tmp_path / "unseen"),
        detector=str(run / "results/predictor/detector.pt"),
        segmenter=str(run / "results/predictor/segmenter.pt"),
        buckets=BucketSettings.from_config(BucketSettings.config_subset(config)),
        settings=PredictSettings.from_config(PredictSettings.config_subset(config)),
    )
    mine = pd.read_csv(tmp_path / "unseen/cascade.csv").set_index("nodule_id")
    theirs = pd.read_csv(run / "results/cascade.csv").set_index("nodule_id")
    assert sorted(mine.index) == sorted(theirs.index)
    assert (mine["detected"] == theirs.loc[mine.index, "detected"]).all()
    assert mine["crop_dice"].isna().all()  # no crop model was evaluated on "unseen" nodules
    summary = pd.read_csv(tmp_path / "unseen/cascade_summary.csv")
    assert summary.set_index("size_bucket").loc["all", "nodules"] == len(theirs)


def test_bench_unseen_needs_the_reference_volumes(tmp_path):
    with pytest.raises(InputError, match="no volume files"):
        bench_unseen(
            series_dirs=[str(tmp_path)],
            nodules=str(tmp_path / "nodules.csv"),
            volumes=str(tmp_path),
            out=str(tmp_path / "out"),
            buckets=BucketSettings.from_config({}),
            settings=PredictSettings.from_config({}),
        )
