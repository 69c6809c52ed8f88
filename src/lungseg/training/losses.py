"""Segmentation losses: soft Dice + binary cross-entropy, summed over the model's output scales.

``build_loss(settings)`` returns an ``nn.Module`` called as ``loss(list_of_logits, target)``: the
first logits tensor is at full resolution, the others at coarser decoder scales (deep
supervision, see :mod:`lungseg.nets.models`). Each coarser scale is compared with the target
downsampled to its shape and the per-scale losses are combined with per-scale weights:

- ``equal``: every scale weighs 1 (the plain sum over scales);
- ``halving``: nnU-Net's deep-supervision weights ``1, 1/2, 1/4, ...`` normalised to sum to 1
  (nnU-Net additionally gives the coarsest head weight 0; here it keeps its share);
- a list of numbers: used as given, one per scale, finest first;
- ``learned``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018):
  ``sum_s exp(-v_s) * L_s + v_s`` with one trainable log-variance ``v_s`` per scale (started at 0,
  i.e. equal weights). Its parameters live in the loss module: the trainer optimises and
  checkpoints them together with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lungseg.core.settings import schema_defaults

LOSSES = ("dice_bce", "dice", "bce")
WEIGHT_SCHEMES = ("equal", "halving", "learned")
TARGET_DOWNSAMPLING = ("area", "maxpool")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` per sample (sigmoid probabilities, no threshold), averaged over the batch.

    ``smooth`` keeps the value defined (and 0) for an empty target with an empty prediction.
    """
    probabilities = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    overlap = (probabilities * target).sum(1)
    total = probabilities.sum(1) + target.sum(1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits, mean over voxels."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def segmentation_loss(name: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The named single-scale loss: ``dice_bce`` (their sum), ``dice`` or ``bce``."""
    if name == "dice":
        return soft_dice_loss(logits, target)
    if name == "bce":
        return bce_loss(logits, target)
    if name == "dice_bce":
        return soft_dice_loss(logits, target) + bce_loss(logits, target)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")


def downsample_target(target: torch.Tensor, shape: Sequence[int], method: str) -> torch.Tensor:
    """A binary ``(B, 1, D, H, W)`` target at spatial ``shape``.

    ``area``: a coarse voxel is foreground when at least half of the fine voxels it covers are
    (area interpolation thresholded at 0.5, i.e. a majority vote: keeps volumes unbiased).
    ``maxpool``: foreground when any covered voxel is (keeps tiny nodules visible, grows them).
    """
    shape = tuple(int(s) for s in shape)
    if tuple(target.shape[2:]) == shape:
        return target.float()
    if method == "area":
        return (F.adaptive_avg_pool3d(target.float(), shape) >= 0.5).float()
    if method == "maxpool":
        return F.adaptive_max_pool3d(target.float(), shape)
    raise ValueError(
        f"unknown target_downsampling {method!r}; expected one of {TARGET_DOWNSAMPLING}"
    )


def fixed_scale_weights(scheme: str | Sequence[float], n_scales: int) -> list[float]:
    """Per-scale weights, finest first, for ``equal``, ``halving`` or an explicit list."""
    if isinstance(scheme, str):
        if scheme == "equal":
            return [1.0] * n_scales
        if scheme == "halving":
            raw = [0.5**scale for scale in range(n_scales)]
            return [w / sum(raw) for w in raw]
        raise ValueError(f"unknown scale_weights {scheme!r}; expected one of {WEIGHT_SCHEMES}")
    weights = [float(w) for w in scheme]
    if len(weights) != n_scales:
        raise ValueError(
            f"scale_weights lists {len(weights)} weights but the model has {n_scales} output "
            f"scale(s) (levels with deep_supervision, else 1)"
        )
    if any(w < 0 for w in weights) or not any(weights):
        raise ValueError(f"scale_weights must be >= 0 and not all 0, got {weights}")
    return weights


class MultiScaleLoss(nn.Module):
    """Sum over scales of ``weight_s * loss(logits_s, target downsampled to scale s)``."""

    def __init__(
        self,
        loss: str,
        n_scales: int = 1,
        *,
        scale_weights: str | Sequence[float],
        target_downsampling: str,
    ):
        """``loss``, ``scale_weights``, ``target_downsampling``: training keys (no defaults here;
        :func:`build_loss` takes them from a variant's settings)."""
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if target_downsampling not in TARGET_DOWNSAMPLING:
            raise ValueError(
                f"unknown target_downsampling {target_downsampling!r}; "
                f"expected one of {TARGET_DOWNSAMPLING}"
            )
        self.loss = loss
        self.n_scales = n_scales
        self.target_downsampling = target_downsampling
        self.learned = scale_weights == "learned"
        if self.learned:
            self.log_variances = nn.Parameter(torch.zeros(n_scales))
        else:
            weights = torch.tensor(fixed_scale_weights(scale_weights, n_scales))
            self.register_buffer("weights", weights, persistent=False)

    def per_scale(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The unweighted loss of every scale, finest first, as a 1-D tensor."""
        if len(logits) != self.n_scales:
            raise ValueError(f"expected {self.n_scales} logits tensor(s), got {len(logits)}")
        return torch.stack(
            [
                segmentation_loss(
                    self.loss,
                    scale_logits,
                    downsample_target(target, scale_logits.shape[2:], self.target_downsampling),
                )
                for scale_logits in logits
            ]
        )

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        losses = self.per_scale(logits, target)
        if self.learned:
            return (torch.exp(-self.log_variances) * losses + self.log_variances).sum()
        return (self.weights.to(losses.device) * losses).sum()


def build_loss(settings: dict[str, Any]) -> MultiScaleLoss:
    """The loss a variant's settings describe.

    Keys: ``loss`` (``dice_bce``/``dice``/``bce``), ``scale_weights`` (``equal``/``halving``/
    ``learned``/list), ``target_downsampling`` (``area``/``maxpool``); the number of scales
    follows the model keys ``deep_supervision`` and ``levels``.
    """
    settings = {**schema_defaults("training"), **settings}  # defaults: the schema's
    n_scales = int(settings["levels"]) if settings["deep_supervision"] else 1
    return MultiScaleLoss(
        loss=settings["loss"],
        n_scales=n_scales,
        scale_weights=settings["scale_weights"],
        target_downsampling=settings["target_downsampling"],
    )
