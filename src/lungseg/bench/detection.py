"""Detector robustness: the same detector trained and scored with several seeds.

Rule ``bench_detection`` (target ``bench_detection``, not part of ``all``) runs
:func:`bench_detection` once per detector: for each seed (``detection_bench.seeds``) the
detector's settings with ``seed`` replaced, trained on the workflow's training scans, run on its
validation scans and scored as ``evaluate_detector`` does, in
``results/bench_detection/{detector}/seed{seed}/``; then ``seeds.csv``: one row per seed (the
results/detection.csv columns, the seed, training seconds). :func:`summarise_seeds` gathers
every detector's rows into results/bench_detection.csv and the spread per detector (mean, SD,
min, max CPM) into results/bench_detection_spread.csv. Seeds change initialisation, patch
sampling and augmentation, so on a fixed split and data the spread is the training's own.

A second stage (mode rescore; rule ``bench_rescorer_seeds``, :func:`bench_rescorer`) runs once
per seed over its stage-1 detector's run of the same seed, so its spread holds both stages'.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.detection.predict import detect
from lungseg.detection.rescorer import rescore, train_rescorer, write_rescorer_samples
from lungseg.detection.settings import DetectorSettings
from lungseg.detection.train import train_detector
from lungseg.evaluation.detection import SUMMARY_COLUMNS, evaluate_detector
from lungseg.inference.checkpoint import read_checkpoint

logger = logging.getLogger(__name__)

SEED_COLUMNS = ["seed", *SUMMARY_COLUMNS, "train_seconds"]
SPREAD_COLUMNS = ["detector", "seeds", "cpm_mean", "cpm_sd", "cpm_min", "cpm_max"]


def bench_detection(
    *,
    scans: str,
    volumes: list[str],
    nodules: str,
    table: str,
    detector: str,
    seeds: list[int],
    settings: DetectorSettings,
    source_volumes: list[str] | None = None,
    threads: int = 1,
) -> None:
    """Train, detect and score ``detector`` once per seed; write ``table`` (seeds.csv).
    ``source_volumes``: the scans' results/volumes files (a detector with ``test_spacing``)."""
    rows = []
    for seed in [int(s) for s in seeds]:
        out = Path(table).parent / f"seed{seed}"
        own = dataclasses.replace(settings, seed=seed)
        logger.info("%s, seed %d -> %s", detector, seed, out)
        train_detector(
            scans=scans,
            volumes=volumes,
            metrics=str(out / "metrics.csv"),
            best=str(out / "best.pt"),
            settings=own,
            threads=threads,
        )
        detect(
            scans=scans,
            volumes=volumes,
            best=str(out / "best.pt"),
            candidates=str(out / "candidates.csv"),
            settings=own,
            source_volumes=source_volumes,
            threads=threads,
        )
        rows.append(_score(out, scans, nodules, detector, own, seed))
    write_csv_atomic(table, pd.DataFrame(rows, columns=SEED_COLUMNS))


def stage1_settings(best: str | Path) -> DetectorSettings:
    """The settings a stage-1 detector was trained with (its best.pt), to run it as trained."""
    trained = read_checkpoint(best)["settings"]
    known = {field.name for field in dataclasses.fields(DetectorSettings)}
    return DetectorSettings.from_config({k: v for k, v in trained.items() if k in known})


def bench_rescorer(
    *,
    stage1_table: str,
    scans: str,
    volumes: list[str],
    source_volumes: list[str],
    nodules: str,
    table: str,
    detector: str,
    seeds: list[int],
    settings: DetectorSettings,
    threads: int = 1,
) -> None:
    """A second stage once per seed, each over its stage-1 detector of the same seed (the
    ``seed{seed}/`` folders beside ``stage1_table``, that detector's seeds.csv): stage 1 over
    the training scans, the crops, the crop model, re-scoring and scoring, as the workflow's
    rules do; write ``table`` (seeds.csv)."""
    rows = []
    for seed in [int(s) for s in seeds]:
        out, first = Path(table).parent / f"seed{seed}", Path(stage1_table).parent / f"seed{seed}"
        own = dataclasses.replace(settings, seed=seed)
        logger.info("%s, seed %d over %s -> %s", detector, seed, first, out)
        detect(
            scans=scans,
            volumes=volumes,
            best=str(first / "best.pt"),
            candidates=str(out / "train_candidates.csv"),
            settings=stage1_settings(first / "best.pt"),
            source_volumes=source_volumes,
            threads=threads,
            subset="train",
        )
        write_rescorer_samples(
            train_candidates=str(out / "train_candidates.csv"),
            val_candidates=str(first / "candidates.csv"),
            scans=scans,
            nodules=nodules,
            volumes=source_volumes,
            samples=str(out / "samples.h5"),
            table=str(out / "samples.csv"),
            settings=own,
        )
        train_rescorer(
            samples=str(out / "samples.h5"),
            table=str(out / "samples.csv"),
            metrics=str(out / "metrics.csv"),
            best=str(out / "best.pt"),
            settings=own,
            threads=threads,
        )
        rescore(
            candidates=str(first / "candidates.csv"),
            scans=scans,
            volumes=source_volumes,
            best=str(out / "best.pt"),
            rescored=str(out / "candidates.csv"),
            settings=own,
            threads=threads,
        )
        rows.append(_score(out, scans, nodules, detector, own, seed))
    write_csv_atomic(table, pd.DataFrame(rows, columns=SEED_COLUMNS))


def _score(out: Path, scans: str, nodules: str, detector: str, settings, seed: int) -> dict:
    """One seed's row: ``evaluate_detector`` in ``out``, and the training seconds."""
    evaluate_detector(
        candidates=str(out / "candidates.csv"),
        scans=scans,
        nodules=nodules,
        metrics=str(out / "metrics.csv"),
        froc=str(out / "froc.csv"),
        bootstrap_table=str(out / "froc_bootstrap.csv"),
        summary=str(out / "summary.csv"),
        operating_point=str(out / "operating_point.json"),
        detector=detector,
        settings=settings,
    )
    row = pd.read_csv(out / "summary.csv").iloc[0].to_dict()
    seconds = float(pd.read_csv(out / "metrics.csv")["seconds"].sum())
    return {"seed": seed, **row, "train_seconds": seconds}


def summarise_seeds(*, tables: list[str], table: str, spread: str) -> None:
    """results/bench_detection.csv (every seed row) and its spread per detector."""
    frame = pd.concat([pd.read_csv(path) for path in tables], ignore_index=True)
    write_csv_atomic(table, frame[SEED_COLUMNS])
    stats = frame.groupby("detector", sort=False)["cpm"].agg(["size", "mean", "std", "min", "max"])
    summary = pd.DataFrame(
        {
            "detector": stats.index,
            "seeds": stats["size"].to_numpy(),
            "cpm_mean": stats["mean"].to_numpy(),
            "cpm_sd": stats["std"].fillna(0.0).to_numpy(),  # one seed: no spread
            "cpm_min": stats["min"].to_numpy(),
            "cpm_max": stats["max"].to_numpy(),
        }
    )
    write_csv_atomic(spread, summary[SPREAD_COLUMNS])
