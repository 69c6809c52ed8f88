"""Train one model variant on the tumour-centred crops.

The :class:`Trainer` follows nnU-Net's trainer skeleton in few lines: ``train_step``,
``validation_step``, ``on_epoch_end`` (metrics row, checkpoints, summary line). After every
epoch it rewrites ``metrics.csv`` and ``last.pt`` atomically, and ``best.pt`` when the validation
metric ``select`` improved: the Dice, or for crop sets with empty crops (the second stage's) the
balanced Dice (:func:`~lungseg.inference.metrics.balanced_dice`). ``last.pt`` holds everything
the next epoch depends on (model, loss and optimiser state, RNG states, metrics history), so
a killed run started again with the same settings and data resumes there and ends with exactly
the metrics of an uninterrupted run (on CPU; on GPU up to the usual non-determinism of some CUDA
kernels).

Loading and applying a trained model, and the Dice that picks ``best.pt``:
:mod:`lungseg.inference`.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError, SettingsError
from lungseg.core.settings import schema_defaults
from lungseg.inference.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from lungseg.inference.metrics import balanced_dice, dice
from lungseg.inference.model import choose_device
from lungseg.nets.models import ModelSettings, build_model
from lungseg.training.data import CropSet, augment, batches, crop_grid, load_crop_sets
from lungseg.training.losses import build_loss
from lungseg.training.memory import peak_memory_bytes
from lungseg.training.settings import VariantSettings

logger = logging.getLogger(__name__)

METRICS_COLUMNS = [
    "epoch",
    "train_loss",
    "train_dice",
    "val_loss",
    "val_dice",
    "seconds",
    "peak_memory_mb",
    "val_balanced_dice",
]
#: the metrics that can pick best.pt
SELECTIONS = ("val_dice", "val_balanced_dice")


@dataclass(frozen=True)
class TrainingSettings:
    """The trainer's keys of a variant's settings (:class:`VariantSettings` has them all)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    seed: int
    hu_min: float
    hu_max: float
    flip: bool
    intensity_jitter: float
    amp: bool

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> TrainingSettings:
        known = {f.name for f in fields(cls)}
        merged = {**schema_defaults("training"), **settings}
        return cls(**{k: v for k, v in merged.items() if k in known})


def dice_per_crop(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Dice of ``logits > 0`` (probability > 0.5) and the target, one value per crop."""
    predicted = (logits.detach().float() > 0).cpu().numpy()
    truth = (target > 0.5).cpu().numpy()
    return [dice(p, t) for p, t in zip(predicted, truth, strict=True)]


def seed_everything(seed: int) -> None:
    random.seed(seed)  # numpy's global RNG is not used anywhere
    torch.manual_seed(seed)  # also seeds every CUDA device


class LogStream:
    """A file-like object for tqdm that sends each refreshed progress bar to the log."""

    def __init__(self) -> None:
        self.text = ""
        self.last = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        line = self.text.replace("\n", "\r").split("\r")
        self.text = ""
        current = next((part.strip() for part in reversed(line) if part.strip()), "")
        # tqdm redraws the final state on close; log each bar position once.
        if current and current.split("[")[0] != self.last.split("[")[0]:
            logger.info(current)
            self.last = current


class Trainer:
    """One variant's training: model, loss (with its learned weights), optimiser, RNG streams."""

    def __init__(
        self,
        settings: dict[str, Any],
        data: dict[str, CropSet],
        out_dir: str | Path,
        device: torch.device,
        data_fingerprint: str = "",
        grid: dict[str, Any] | None = None,
        select: str = "val_dice",
    ):
        if select not in SELECTIONS:
            raise SettingsError(f"select: {select!r} is not one of {SELECTIONS}")
        self.select = select
        self.settings = dict(settings)
        #: the crops' grid (training.data.crop_grid), kept in every checkpoint for the predictor
        self.grid = dict(grid or {})
        self.options = TrainingSettings.from_dict(settings)
        self.data = data
        self.out_dir = Path(out_dir)
        self.device = device
        self.data_fingerprint = data_fingerprint
        seed_everything(self.options.seed)
        self.model = build_model(settings).to(device)
        self.loss = build_loss(settings).to(device)
        self.optimizer = torch.optim.AdamW(
            [*self.model.parameters(), *self.loss.parameters()],
            lr=self.options.lr,
            weight_decay=self.options.weight_decay,
        )
        # Shuffling and augmentation draw from their own stream, saved in checkpoints.
        self.generator = torch.Generator().manual_seed(self.options.seed + 1)
        self.autocast = self.options.amp and device.type == "cuda"
        self.history: list[dict[str, float]] = []
        self.best_val_dice = -1.0  # the best value of select (the name predates select)
        # A copy of best.pt's content travels in last.pt: Snakemake deletes best.pt (a declared
        # output) before rerunning a killed job, and a resumed run may never beat that epoch.
        self.best_state: dict[str, Any] | None = None

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, masks: torch.Tensor):
        # bfloat16 autocast needs no gradient scaler; memcnn runs invertible blocks in float32.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(images)
        loss = self.loss(logits, masks)
        dice = dice_per_crop(logits[0], masks)
        return loss, dice

    def train_step(self, images: torch.Tensor, masks: torch.Tensor):
        self.optimizer.zero_grad(set_to_none=True)
        loss, dice = self.forward(images, masks)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), dice

    @torch.no_grad()
    def validation_step(self, images: torch.Tensor, masks: torch.Tensor):
        return self.forward(images, masks)

    def run_subset(self, subset: str, epoch: int) -> tuple[float, float, float]:
        """One pass over a subset: mean loss and Dice per crop, and the balanced Dice."""
        crops = self.data[subset]
        training = subset == "train"
        self.model.train(training)
        order = batches(len(crops), self.options.batch_size, self.generator if training else None)
        loss_sum, dices, has_target = 0.0, [], []
        progress = tqdm(
            order,
            desc=f"epoch {epoch}/{self.options.epochs} {subset}",
            file=LogStream(),
            mininterval=10,
            ascii=True,
        )
        for rows in progress:
            images, masks = crops.images[rows], crops.masks[rows]
            # from the host copy (flips keep a crop empty or not): no device round trip
            has_target += (masks.flatten(1) > 0.5).any(dim=1).tolist()
            if training:
                images, masks = augment(
                    images,
                    masks,
                    self.generator,
                    self.options.flip,
                    self.options.intensity_jitter,
                )
            images, masks = images.to(self.device), masks.to(self.device)
            step = self.train_step if training else self.validation_step
            loss, dice = step(images, masks)
            loss_sum += float(loss) * len(rows)
            dices += dice
        progress.close()
        return loss_sum / len(crops), float(np.mean(dices)), balanced_dice(dices, has_target)

    # -- epochs --------------------------------------------------------------------------------
    def fit(self) -> pd.DataFrame:
        """Train the remaining epochs; returns the full metrics table."""
        for epoch in range(len(self.history) + 1, self.options.epochs + 1):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            start = time.perf_counter()
            train_loss, train_dice, _ = self.run_subset("train", epoch)
            val_loss, val_dice, val_balanced_dice = self.run_subset("val", epoch)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_dice": train_dice,
                "val_loss": val_loss,
                "val_dice": val_dice,
                "seconds": time.perf_counter() - start,
                "peak_memory_mb": peak_memory_bytes(self.device) / 2**20,
                "val_balanced_dice": val_balanced_dice,
            }
            self.on_epoch_end(row)
        return self.metrics()

    def on_epoch_end(self, row: dict[str, float]) -> None:
        self.history.append(row)
        improved = row[self.select] > self.best_val_dice
        if improved:
            self.best_val_dice = row[self.select]
            self.best_state = copy.deepcopy(self.state())
            save_checkpoint(self.best_state, self.out_dir / "best.pt")
        save_checkpoint({**self.state(), "best": self.best_state}, self.out_dir / "last.pt")
        write_csv_atomic(self.out_dir / "metrics.csv", self.metrics())
        chosen = "" if self.select == "val_dice" else f" {self.select} {row[self.select]:.3f}"
        logger.info(
            "epoch %d/%d: train loss %.4f dice %.3f | val loss %.4f dice %.3f%s | %.1f s, "
            "peak %.0f MB%s",
            *(row["epoch"], self.options.epochs, row["train_loss"], row["train_dice"]),
            *(row["val_loss"], row["val_dice"], chosen, row["seconds"], row["peak_memory_mb"]),
            " | new best" if improved else "",
        )

    def metrics(self) -> pd.DataFrame:
        return pd.DataFrame(self.history, columns=METRICS_COLUMNS)

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "settings": self.settings,
            "data_fingerprint": self.data_fingerprint,
            "crop_grid": self.grid,
            "epoch": len(self.history),
            "history": self.history,
            "best_val_dice": self.best_val_dice,
            "select": self.select,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "generator": self.generator.get_state(),
            },
            "versions": {"torch": str(torch.__version__)},
        }

    def resume_from(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.loss.load_state_dict(checkpoint["loss"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.history = [dict(row) for row in checkpoint["history"]]
        self.best_val_dice = float(checkpoint["best_val_dice"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if checkpoint["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["rng"]["cuda"])
        self.generator.set_state(checkpoint["rng"]["generator"])
        self.best_state = checkpoint["best"]
        best_path = self.out_dir / "best.pt"
        if not best_path.exists():
            logger.info("restoring %s (epoch %d) from last.pt", best_path, self.best_state["epoch"])
            save_checkpoint(self.best_state, best_path)


def resumable(
    path: Path, settings: dict[str, Any], fingerprint: str, select: str = "val_dice"
) -> dict[str, Any] | None:
    """``last.pt`` if it belongs to an unfinished run with these settings, data and selection
    metric, else None."""
    if not path.exists():
        return None
    try:
        checkpoint = read_checkpoint(path)
    except InputError:
        logger.warning(
            "%s is not a readable checkpoint (truncated or corrupt): starting afresh", path
        )
        return None
    epochs = TrainingSettings.from_dict(settings).epochs
    if checkpoint["settings"] != settings:
        logger.info("%s: other settings, training from scratch", path)
    elif checkpoint.get("select", "val_dice") != select:
        logger.info("%s: best.pt chosen by another metric, training from scratch", path)
    elif checkpoint["data_fingerprint"] != fingerprint:
        logger.info("%s: other crops or split, training from scratch", path)
    elif checkpoint["epoch"] >= epochs:
        logger.info("%s: a finished run, training again from scratch", path)
    else:
        return checkpoint
    return None


def train(
    crops_h5: str | Path,
    crops_csv: str | Path,
    split_csv: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    threads: int = 1,
    device: str = "auto",
    select: str = "val_dice",
) -> pd.DataFrame:
    """Train one variant; writes ``metrics.csv``, ``last.pt``, ``best.pt`` (the epoch of the
    highest ``select``, a column of metrics.csv) to ``out_dir``.

    Resumes from ``out_dir/last.pt`` when it is an unfinished run of the same settings and data.
    """
    torch.set_num_threads(max(1, int(threads)))
    chosen_device = choose_device(device)
    options = TrainingSettings.from_dict(settings)
    if chosen_device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    levels = ModelSettings.from_dict(settings).levels
    data, fingerprint = load_crop_sets(
        crops_h5, crops_csv, split_csv, options.hu_min, options.hu_max
    )
    crop_shape = tuple(data["train"].images.shape[2:])
    if any(size % 2 ** (levels - 1) for size in crop_shape):
        raise ValueError(
            f"{crops_h5}: crop size {crop_shape} is not divisible by 2**(levels-1) = "
            f"{2 ** (levels - 1)} (levels={levels}); change the crop size or the model levels"
        )
    logger.info(
        "training %s on %s: %d train / %d val crops of %s, settings %s",
        settings.get("arch"),
        chosen_device,
        len(data["train"]),
        len(data["val"]),
        crop_shape,
        json.dumps(settings, sort_keys=True),
    )
    trainer = Trainer(
        settings, data, out_dir, chosen_device, fingerprint, crop_grid(crops_h5), select
    )
    checkpoint = resumable(Path(out_dir) / "last.pt", settings, fingerprint, select)
    if checkpoint is not None:
        trainer.resume_from(checkpoint)
        logger.info(
            "resuming after epoch %d from %s", checkpoint["epoch"], Path(out_dir) / "last.pt"
        )
    metrics = trainer.fit()
    logger.info(
        "best %s %.3f (epoch %d)", select, metrics[select].max(), metrics[select].idxmax() + 1
    )
    return metrics


# -- the rule ------------------------------------------------------------------------------------
def run_train(
    *,
    crops: str,
    table: str,
    split: str,
    metrics: str,
    best: str,
    settings: VariantSettings,
    threads: int = 1,
) -> None:
    """Train one variant on ``crops``/``table`` (crops.h5, crops.csv) with ``split``.

    Writes ``metrics`` (metrics.csv), ``best`` (best.pt) and last.pt beside them; a killed run
    started again resumes from last.pt.
    """
    out_dir = Path(metrics).parent
    if Path(best) != out_dir / "best.pt":
        raise SettingsError(f"train writes best.pt beside metrics.csv: expected {out_dir}/best.pt")
    train(crops, table, split, out_dir, settings.to_config(), threads=threads)


__all__ = ["Trainer", "TrainingSettings", "run_train", "train"]
