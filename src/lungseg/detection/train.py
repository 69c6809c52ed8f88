"""Train one detector on the detection volumes of the training patients; lungseg's Trainer.

:class:`DetectionTrainer` is :class:`lungseg.training.Trainer` (model and optimiser from the
settings, seeded generator, ``metrics.csv`` with the segmentation models' columns, ``last.pt`` /
``best.pt``, exact resume) with three things replaced: the loss skips the target's ignore label
(:data:`lungseg.detection.volumes.IGNORE`); loss ``focal`` trains on nodule-centre heatmaps
(:mod:`lungseg.detection.heatmap`) and keeps the epoch of lowest validation loss as best.pt (the
others: highest validation Dice); and the data are whole scans, streamed from their HDF5 files
(:mod:`lungseg.detection.stream`: one batch in memory, whatever the number of scans):

- mode ``whole``: every training scan once per epoch, whole, batch 1 (one pass per scan);
- mode ``patch``: ``patches_per_epoch`` patches of ``patch_size`` in batches of ``batch_size``;
  of every batch the last ``ceil(foreground_fraction * batch_size)`` patches are centred on a
  random nodule voxel of a random training scan with nodules (nnU-Net's foreground
  oversampling), the others lie uniformly at random.

With ``nodule_balance_voxels`` B > 0 the BCE weight of a nodule (26-connected component of the
target) of n < B voxels is multiplied by B / n: at 4 mm a 6 mm nodule is 1-3 voxels and a 20 mm
one ~100, so without it the loss hardly sees the small ones (a third target channel holds it).

``lr_schedule`` cosine sets epoch e's learning rate to ``lr * (1 + cos(pi (e - 1) / epochs)) / 2``.

Validation (both modes) scores the whole validation volumes as inference does (one pass, or
sliding windows). Dice per scan at probability 0.5 over the voxels that are not ignored (with a
heatmap target: against the heatmap's >= 0.5 region around each centre).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lungseg.core.errors import InputError
from lungseg.detection.heatmap import PRIOR_BIAS, gaussian_focal_loss
from lungseg.detection.inference import volume_logits
from lungseg.detection.scans import read_scan_table
from lungseg.detection.settings import DetectorSettings
from lungseg.detection.stream import ScanIndex, TargetSpec, index_scans, new_digest
from lungseg.detection.stream import nodule_balance as nodule_balance
from lungseg.inference.metrics import dice
from lungseg.inference.model import choose_device
from lungseg.io.hdf5 import read_attrs
from lungseg.training.data import augment, batches
from lungseg.training.losses import soft_dice_loss
from lungseg.training.trainer import Trainer, resumable

logger = logging.getLogger(__name__)


def load_scan_sets(
    scans_csv: str | Path, volumes: list[str], settings: DetectorSettings
) -> tuple[dict[str, ScanIndex], str, dict[str, Any]]:
    """Train and val scan indexes (:mod:`lungseg.detection.stream`), a fingerprint of their
    data, and the volumes' shared attrs. Images stay on disk."""
    table = read_scan_table(scans_csv)
    given = {str(Path(p)) for p in volumes}
    unknown = sorted(set(table["path"].map(lambda p: str(Path(p)))) - given)
    if unknown:
        raise InputError(f"{scans_csv}: volume(s) not among the inputs: {unknown[:3]}")
    attrs = read_attrs(table["path"].iloc[0])
    spacing = [float(s) for s in attrs["spacing"]]
    spec = TargetSpec(
        hu_min=settings.hu_min,
        hu_max=settings.hu_max,
        heatmap=settings.loss == "focal",
        sigma_vox=tuple(settings.heatmap_sigma_mm / s for s in spacing),
        balance_voxels=settings.nodule_balance_voxels,
    )
    digest = new_digest()
    sets: dict[str, ScanIndex] = {}
    for subset in ("train", "val"):
        rows = table[table["subset"] == subset]
        if rows.empty:
            raise InputError(f"{scans_csv}: no scans of subset {subset!r}")
        digest.update(subset.encode())
        sets[subset] = index_scans(list(rows["path"]), list(rows["series_uid"]), spec, digest)
    shared = {
        "spacing": spacing,
        "shape": list(sets["train"].shape),
        "body_threshold_hu": attrs["body_threshold_hu"],
        "margin_mm": attrs["margin_mm"],
        "pad_hu": attrs["pad_hu"],
    }
    return sets, digest.hexdigest(), shared


def masked_loss(
    name: str, logits: torch.Tensor, masks: torch.Tensor, foreground_weight: float = 1.0
) -> torch.Tensor:
    """``dice_bce``/``dice``/``bce``/``focal`` of logits against channel 0, skipping ignored voxels.

    ``focal``: :func:`lungseg.detection.heatmap.gaussian_focal_loss` (channel 0 a heatmap).

    BCE weighs nodule voxels ``foreground_weight`` (background 1) and is normalised by the
    weight sum, times channel 2 of ``masks`` where present (:func:`nodule_balance`); Dice is one
    soft Dice over the whole batch.
    """
    target, valid = masks[:, :1], masks[:, 1:2]
    logits = logits.float()
    if name == "focal":
        return gaussian_focal_loss(logits, target, valid)
    total = logits.new_zeros(())
    if name in ("dice", "dice_bce"):  # ignored voxels: probability 0 and target 0
        # one Dice over the whole batch (nnU-Net's batch Dice): a patch without a nodule adds
        # its false positives instead of a Dice of its own that only an empty output satisfies
        masked = logits.masked_fill(valid == 0, -1e4).reshape(1, 1, -1)
        total = total + soft_dice_loss(masked, (target * valid).reshape(1, 1, -1))
    if name in ("bce", "dice_bce"):
        weight = valid * (1.0 + (foreground_weight - 1.0) * target)
        if masks.shape[1] > 2:
            weight = weight * masks[:, 2:3]
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        total = total + bce / weight.sum().clamp(min=1.0)
    return total


def dice_per_scan(logits: torch.Tensor, masks: torch.Tensor) -> list[float]:
    valid = masks[:, 1].bool().cpu().numpy()
    predicted = (logits.detach()[:, 0] > 0).cpu().numpy() & valid
    truth = (masks[:, 0] > 0.5).cpu().numpy() & valid
    return [dice(p, t) for p, t in zip(predicted, truth, strict=True)]


class DetectionTrainer(Trainer):
    """lungseg's Trainer on whole scans or patches, with the ignore label skipped."""

    def __init__(self, settings: dict[str, Any], data, out_dir, device, data_fingerprint=""):
        # the Trainer builds the crop models' loss module, which the detector does not use
        # (forward below): a heatmap detector gets it built as bce, then its own settings back
        built = {**settings, "loss": "bce"} if settings["loss"] == "focal" else settings
        super().__init__(built, data, out_dir, device, data_fingerprint)
        self.settings = dict(settings)
        self.detector = DetectorSettings.from_config(
            {k: v for k, v in settings.items() if k not in ("deep_supervision", "volumes")}
        )
        if self.detector.loss == "focal":
            with torch.no_grad():
                self.model.heads[0].bias.fill_(PRIOR_BIAS)

    def forward(self, images: torch.Tensor, masks: torch.Tensor):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            if self.model.training:
                logits = self.model(images)[0]
            else:
                logits = volume_logits(self.model, images, self.settings)
        loss = masked_loss(self.detector.loss, logits, masks, self.detector.foreground_weight)
        return loss, dice_per_scan(logits, masks)

    def on_epoch_end(self, row: dict[str, float]) -> None:
        """The Trainer's, choosing best.pt by validation loss (focal: a heatmap's Dice at 0.5
        says little) or by validation Dice, at equal Dice the lower loss.

        Early epochs of a mask detector often all have Dice 0 on the validation scans (nothing
        above 0.5 yet): the loss then decides, so best.pt is never the untrained first epoch.
        """
        if self.best_state is not None:
            best = self.history[self.best_state["epoch"] - 1]
            lower = row["val_loss"] < best["val_loss"]
            if self.detector.loss == "focal":
                # the Trainer keeps the epoch whose val_dice beats best_val_dice (strictly)
                self.best_val_dice = row["val_dice"] - (1e-12 if lower else -1e-12)
            elif row["val_dice"] == self.best_val_dice and lower:
                self.best_val_dice = row["val_dice"] - 1e-12
        super().on_epoch_end(row)

    def patch_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of training patches, read from disk batch by batch (module docstring)."""
        scans = self.data["train"]
        size = np.asarray(self.detector.patch_size)
        shape = np.asarray(scans.shape)
        with_nodules = [i for i, f in enumerate(scans.foreground) if len(f)]
        total, per_batch = self.detector.patches_per_epoch, self.detector.batch_size
        for start in range(0, total, per_batch):
            n = min(per_batch, total - start)
            n_fg = math.ceil(self.detector.foreground_fraction * n) if with_nodules else 0
            images, masks = [], []
            for k in range(n):
                draw = torch.rand(4, generator=self.generator).numpy()
                if k >= n - n_fg:
                    scan = with_nodules[int(draw[0] * len(with_nodules))]
                    voxels = scans.foreground[scan]
                    centre = voxels[int(draw[1] * len(voxels))]
                    corner = np.clip(centre - size // 2, 0, shape - size)
                else:
                    scan = int(draw[0] * len(scans))
                    corner = np.floor(draw[1:] * (shape - size + 1)).astype(int)
                image, mask = scans.read(scan, corner, size)
                images.append(image)
                masks.append(mask)
            yield torch.stack(images), torch.stack(masks)

    def scan_batches(self, subset: str, training: bool):
        """Whole scans, one a step, read as they are needed (shuffled when training)."""
        scans = self.data[subset]
        for rows in batches(len(scans), 1, self.generator if training else None):
            image, mask = scans.read(int(rows[0]))
            yield image[None], mask[None]

    def epoch_lr(self, epoch: int) -> float:
        """``lr`` (constant), or cosine-annealed from ``lr`` towards 0 over the epochs."""
        if self.detector.lr_schedule == "constant":
            return self.detector.lr
        phase = math.pi * (epoch - 1) / self.detector.epochs
        return self.detector.lr * 0.5 * (1 + math.cos(phase))

    def run_subset(self, subset: str, epoch: int) -> tuple[float, float, float]:
        training = subset == "train"
        if training:  # set from the epoch alone: a resumed run continues the same schedule
            for group in self.optimizer.param_groups:
                group["lr"] = self.epoch_lr(epoch)
        self.model.train(training)
        if training and self.detector.mode == "patch":
            steps = self.patch_batches()
        else:
            steps = self.scan_batches(subset, training)
        loss_sum, count, dices = 0.0, 0, []
        for images, masks in steps:
            if training:
                images, masks = augment(
                    images, masks, self.generator, self.options.flip, self.options.intensity_jitter
                )
                loss, scores = self.train_step(images.to(self.device), masks.to(self.device))
            else:
                loss, scores = self.validation_step(images.to(self.device), masks.to(self.device))
            loss_sum += float(loss) * len(images)
            count += len(images)
            dices += scores
        # a scan always holds lung besides any nodule: the balanced Dice is the Dice
        return loss_sum / count, float(np.mean(dices)), float(np.mean(dices))


def checkpoint_settings(settings: DetectorSettings, volumes: dict[str, Any]) -> dict[str, Any]:
    """What best.pt keeps as its settings: the detector's, and the detection volumes' geometry."""
    return {**settings.model_settings(), "volumes": volumes}


def train_detector(
    *,
    scans: str,
    volumes: list[str],
    metrics: str,
    best: str,
    settings: DetectorSettings,
    threads: int = 1,
) -> None:
    """Train one detector; writes metrics.csv, best.pt (declared) and last.pt next to them."""
    out_dir = Path(metrics).parent
    if Path(best).parent != out_dir:
        raise InputError(f"best ({best}) and metrics ({metrics}) must share a folder")
    torch.set_num_threads(max(1, int(threads)))
    device = choose_device(settings.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    data, fingerprint, geometry = load_scan_sets(scans, volumes, settings)
    shape = data["train"].shape
    if settings.mode == "patch" and any(
        p > s for p, s in zip(settings.patch_size, shape, strict=True)
    ):
        raise InputError(f"patch_size {list(settings.patch_size)} larger than volumes {shape}")
    merged = checkpoint_settings(settings, geometry)
    logger.info(
        "training detector (%s, %s) on %s: %d train / %d val scans of %s, settings %s",
        settings.arch,
        settings.mode,
        device,
        len(data["train"]),
        len(data["val"]),
        list(shape),
        json.dumps(merged, sort_keys=True),
    )
    trainer = DetectionTrainer(merged, data, out_dir, device, fingerprint)
    checkpoint = resumable(out_dir / "last.pt", merged, fingerprint)
    if checkpoint is not None:
        trainer.resume_from(checkpoint)
        logger.info("resuming after epoch %d from %s", checkpoint["epoch"], out_dir / "last.pt")
    table = trainer.fit()
    best_epoch = trainer.best_state["epoch"] if trainer.best_state else 0
    logger.info(
        "best.pt: epoch %d (val Dice %.3f, val loss %.4f)",
        best_epoch,
        table["val_dice"].iloc[best_epoch - 1],
        table["val_loss"].iloc[best_epoch - 1],
    )
