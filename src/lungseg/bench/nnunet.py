"""nnU-Net v2 as the peer of lungseg's crop models (``lungseg bench-nnunet``; docs/training.md).

On the crops and the split of a workflow run: the crops as an nnU-Net raw dataset
(:mod:`lungseg.bench.nnunet_export`), ``nnUNetv2_plan_and_preprocess -c 3d_fullres
--verify_dataset_integrity``, training of the ``3d_fullres`` fold whose validation cases are
split.csv's ``val`` subset with a fixed-length nnU-Net trainer, prediction of those cases, each
step a child process (:mod:`lungseg.bench.nnunet_run`; nnU-Net's folders are environment
variables under ``workdir``: ``raw``, ``preprocessed``, ``trained``). Its foreground
probabilities are scored as lungseg's own models are (:func:`lungseg.evaluation.evaluate.
score_predictions`: the ``evaluation`` threshold and size buckets, other nodules' voxels
removed) into a table with the columns of ``results/models/{model}/evaluation.csv``, and one
summary row. Needs the optional nnU-Net install (``make nnunet``, requirements-nnunet.lock).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.bench.nnunet_export import (
    CHANNEL,
    FILE_ENDING,
    dataset_folder_name,
    export_cases,
    export_dataset,
    validation_fold,
)
from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import LungsegError
from lungseg.evaluation.settings import EvaluationSettings

logger = logging.getLogger(__name__)

CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"
MODEL = f"nnunet_{CONFIGURATION}"
SUMMARY_COLUMNS = [
    "model",
    "nnunetv2_version",
    "trainer",
    "epochs",
    "iterations_per_epoch",
    "batch_size",
    "optimizer_steps",
    "device",
    "threads",
    "plan_seconds",
    "train_seconds",
    "predict_seconds",
    "wall_seconds",
    "dice_mean",
    "dice_median",
    "n_nodules",
]


def nnunet_version() -> str:
    """The installed nnunetv2's version; a :class:`LungsegError` saying how to install it."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise LungsegError(
            "nnU-Net v2 is not installed: run `make nnunet` (requirements-nnunet.lock)"
        )
    return importlib.metadata.version("nnunetv2")


def nnunet_environment(workdir: Path, threads: int) -> dict[str, str]:
    """The environment of nnU-Net's steps: its three folders under ``workdir``, ``threads``
    CPU threads, data augmentation in ``threads - 1`` worker processes, at least 1 (nnU-Net's
    planner sets torch's threads to that number, and 0 fails there)."""
    folders = {
        "nnUNet_raw": "raw",
        "nnUNet_preprocessed": "preprocessed",
        "nnUNet_results": "trained",
    }
    env = {**os.environ, **{key: str(workdir.resolve() / sub) for key, sub in folders.items()}}
    env.update(
        nnUNet_n_proc_DA=str(max(threads - 1, 1)),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env


def run_step(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> float:
    """Run one nnU-Net step, its output to ``<log_dir>/<name>.log``; its wall seconds. A failed
    step raises ``RuntimeError`` with the end of its log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{name}.log"
    shown = " ".join(command[:12]) + (
        f" ... ({len(command) - 12} more)" if len(command) > 12 else ""
    )
    logger.info("nnU-Net %s: %s (log: %s)", name, shown, log_file)
    start = time.perf_counter()
    with log_file.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"nnU-Net {name} failed (exit {done.returncode}); {log_file}:\n{tail}")
    logger.info("nnU-Net %s: %.1f s", name, seconds)
    return seconds


def nnunet_command(name: str) -> str:
    """An nnU-Net console script of this Python's environment."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise LungsegError(f"{path} not found: run `make nnunet` (requirements-nnunet.lock)")
    return str(path)


def trainer_epochs(trainer: str) -> int:
    """Epochs of a stock nnU-Net trainer: ``nnUNetTrainer_<N>epoch(s)``, else nnU-Net's 1000."""
    match = re.fullmatch(r"nnUNetTrainer_(\d+)epochs?", trainer)
    if match:
        return int(match[1])
    if trainer == "nnUNetTrainer":
        return 1000
    raise LungsegError(f"trainer {trainer!r}: nnUNetTrainer or nnUNetTrainer_<N>epochs")


def read_probabilities(out_dir: Path, cases: list[str]) -> np.ndarray:
    """Foreground probabilities ``(N, z, y, x)`` of nnU-Net's ``<case>.npz`` files."""
    arrays = []
    for case in cases:
        with np.load(out_dir / f"{case}.npz") as file:
            arrays.append(file["probabilities"][1].astype(np.float32))
    return np.stack(arrays)


@dataclass(frozen=True)
class Workspace:
    """An exported, planned nnU-Net dataset under ``root`` and how its steps run."""

    root: Path
    dataset_id: int
    raw: Path  # the raw dataset folder
    cases: pd.DataFrame  # export_cases: nodule_id, subset, (fold), row, case
    env: dict[str, str]
    threads: int
    device: str

    @property
    def dataset(self) -> str:
        return dataset_folder_name(self.dataset_id)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def model_dir(self, trainer: str) -> Path:
        return self.root / "trained" / self.dataset / f"{trainer}__{PLANS}__{CONFIGURATION}"

    def batch_size(self) -> int:
        plans = json.loads(
            (self.root / "preprocessed" / self.dataset / f"{PLANS}.json").read_text()
        )
        return int(plans["configurations"][CONFIGURATION]["batch_size"])


def prepare(
    crops: str, table: str, split: str, workdir: str, dataset_id: int, threads: int, device: str
) -> tuple[Workspace, float]:
    """Export the crops and split as nnU-Net's raw dataset and plan and preprocess it
    (``--verify_dataset_integrity``); the workspace and the planning's seconds."""
    root = Path(workdir)
    env = nnunet_environment(root, threads)
    raw = export_dataset(crops, table, split, root / "raw", dataset_id)
    space = Workspace(root, dataset_id, raw, export_cases(table, split), env, threads, device)
    plan = [nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id)]
    plan += ["-c", CONFIGURATION, "--verify_dataset_integrity"]
    plan += ["-np", str(threads), "-npfp", str(threads)]
    seconds = run_step("plan_and_preprocess", plan, env, space.logs)
    shutil.copyfile(
        raw / "splits_final.json", root / "preprocessed" / space.dataset / "splits_final.json"
    )
    return space, seconds


def train_and_predict(
    space: Workspace, fold: int, trainer: str, val_cases: list[str], predictions: Path
) -> dict[str, float]:
    """Train nnU-Net fold ``fold`` (an index of splits_final.json) and predict ``val_cases``
    with its final checkpoint into ``predictions`` (``<case>.npz``); seconds and iterations."""
    child = [sys.executable, "-m", "lungseg.bench.nnunet_run", "--threads", str(space.threads)]
    suffix = f"_fold_{fold}" if "fold" in space.cases.columns else ""  # logs: one per fold
    train = [*child, "train", str(space.dataset_id), CONFIGURATION, str(fold), trainer]
    train_s = run_step(f"train{suffix}", [*train, space.device], space.env, space.logs)
    model_dir = space.model_dir(trainer)
    raw_images = space.raw / "imagesTr"
    images = [str(raw_images / f"{case}{CHANNEL}{FILE_ENDING}") for case in val_cases]
    shutil.rmtree(predictions, ignore_errors=True)
    predict = [*child, "predict", str(model_dir), str(fold), str(predictions), space.device]
    predict_s = run_step(f"predict{suffix}", [*predict, *images], space.env, space.logs)
    debug = json.loads((model_dir / f"fold_{fold}" / "debug.json").read_text())
    iterations = int(debug.get("num_iterations_per_epoch", 250))
    return {"train_seconds": train_s, "predict_seconds": predict_s, "iterations": iterations}


def score_split(
    space: Workspace,
    crops: str,
    table: str,
    split: str,
    predictions: Path,
    settings: EvaluationSettings,
) -> pd.DataFrame:
    """nnU-Net's foreground probabilities of ``split``'s val crops scored as lungseg scores its
    own models (the columns of ``results/models/{model}/evaluation.csv``)."""
    from lungseg.evaluation.evaluate import read_validation_crops, score_predictions

    crop_rows, arrays = read_validation_crops(crops, table, split)
    case_of = dict(zip(space.cases["nodule_id"], space.cases["case"], strict=True))
    probabilities = read_probabilities(predictions, [case_of[n] for n in crop_rows["nodule_id"]])
    return score_predictions(
        probabilities,
        arrays["mask"],
        arrays["other"],
        crop_rows,
        settings.threshold,
        settings.size_buckets_mm,
    )


def summary_row(space: Workspace, trainer: str, timing: dict, scores: pd.DataFrame) -> dict:
    """One row of ``SUMMARY_COLUMNS`` (without ``wall_seconds``, ``plan_seconds``)."""
    epochs = trainer_epochs(trainer)
    return {
        "model": MODEL,
        "nnunetv2_version": nnunet_version(),
        "trainer": trainer,
        "epochs": epochs,
        "iterations_per_epoch": timing["iterations"],
        "batch_size": space.batch_size(),
        "optimizer_steps": epochs * timing["iterations"],
        "device": space.device,
        "threads": space.threads,
        "train_seconds": round(timing["train_seconds"], 1),
        "predict_seconds": round(timing["predict_seconds"], 1),
        "dice_mean": round(float(scores["dice"].mean()), 6),
        "dice_median": round(float(scores["dice"].median()), 6),
        "n_nodules": len(scores),
    }


def run_bench_nnunet(
    *,
    crops: str = "results/crops/crops.h5",
    table: str = "results/crops/crops.csv",
    split: str = "results/split/split.csv",
    workdir: str = "results/nnunet",
    evaluation: str = "results/nnunet/evaluation.csv",
    summary: str = "results/nnunet/summary.csv",
    trainer: str = "nnUNetTrainer_1epoch",
    dataset_id: int = 501,
    settings: EvaluationSettings,
    threads: int = 2,
) -> pd.DataFrame:
    """Export the crops, plan, train and predict nnU-Net's ``3d_fullres`` on the val fold, score
    it like lungseg's models; writes ``evaluation`` and ``summary`` (returned)."""
    from lungseg.inference.model import choose_device

    start = time.perf_counter()
    nnunet_version()
    trainer_epochs(trainer)  # a bad trainer name fails before the export
    device = choose_device(settings.device).type
    space, plan_s = prepare(crops, table, split, workdir, dataset_id, threads, device)
    fold = validation_fold(space.cases)
    val = space.cases.loc[space.cases["subset"] == "val", "case"].tolist()
    predictions = space.root / "predictions"
    timing = train_and_predict(space, fold, trainer, val, predictions)
    scores = score_split(space, crops, table, split, predictions, settings)
    write_csv_atomic(evaluation, scores)
    row = summary_row(space, trainer, timing, scores)
    row |= {"plan_seconds": round(plan_s, 1), "wall_seconds": round(time.perf_counter() - start, 1)}
    frame = pd.DataFrame([row], columns=SUMMARY_COLUMNS)
    write_csv_atomic(summary, frame)
    logger.info(
        "nnU-Net %s: Dice mean %.3f over %d val nodules", trainer, row["dice_mean"], len(scores)
    )
    return frame
