"""A detector applied to whole detection volumes: one pass, or MONAI's sliding windows.

Mode ``whole`` runs the network once on the whole canvas; mode ``patch`` runs
``monai.inferers.sliding_window_inference`` with windows of ``patch_size``, ``sw_overlap`` and
Gaussian blending of overlapping windows (nnU-Net's choice). Both return full-resolution logits
``(B, 1, D, H, W)`` of the model's first output. With ``test_flips`` the probability map is the
mean of the network's on the volume and on its mirror images along y, x and both (test-time
augmentation, as nnU-Net's mirroring; 4 passes).

:func:`search_volume` makes the canvas a trained detector searches a scan on: its detection
volumes' transformation, at its ``test_spacing`` when it has one (test-time zoom: at a finer
spacing a 5-7 mm nodule covers as many voxels as the larger nodules the detector learned at the
training spacing), the canvas grown to hold the lungs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lungseg.detection.settings import VolumeSettings
from lungseg.detection.volumes import make_detection_volume
from lungseg.inference.intensity import normalise_hu


def volume_logits(model: torch.nn.Module, images: torch.Tensor, settings: Mapping[str, Any]):
    """Logits ``(B, 1, D, H, W)`` of normalised images ``(B, 1, D, H, W)`` on the model's device."""
    if settings["mode"] == "whole":
        return model(images)[0]
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        images,
        roi_size=tuple(int(s) for s in settings["patch_size"]),
        sw_batch_size=int(settings["sw_batch_size"]),
        predictor=lambda windows: model(windows)[0],
        overlap=float(settings["sw_overlap"]),
        mode="gaussian",
    )


@torch.no_grad()
def probability_map(
    model: torch.nn.Module, image_hu: np.ndarray, settings: Mapping[str, Any]
) -> np.ndarray:
    """Nodule probability ``(D, H, W)`` float32 of one int16 HU canvas (training window)."""
    device = next(model.parameters()).device
    model.eval()
    x = torch.from_numpy(normalise_hu(image_hu, settings["hu_min"], settings["hu_max"]))
    x = x[None, None].to(device)
    flips = FLIPS if settings["test_flips"] else FLIPS[:1]
    total = torch.zeros_like(x)
    for axes in flips:
        logits = volume_logits(model, x.flip(axes) if axes else x, settings).float()
        total += torch.sigmoid(logits.flip(axes) if axes else logits)
    return (total / len(flips))[0, 0].cpu().numpy()


#: Mirrorings of test_flips: none, y, x, y and x (dims of (B, C, D, H, W)).
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (4,), (3, 4))


def search_settings(trained: Mapping[str, Any]) -> VolumeSettings:
    """The detection-volume settings a trained detector (best.pt's ``settings``) searches at."""
    volumes = VolumeSettings.from_config(trained["volumes"])
    spacing = trained.get("test_spacing")  # absent in checkpoints older than the key
    if spacing is None:
        return volumes
    return dataclasses.replace(volumes, spacing=tuple(float(s) for s in spacing))


def search_volume(
    image: np.ndarray, source_spacing: Sequence[float], trained: Mapping[str, Any]
) -> tuple[np.ndarray, dict[str, Any], VolumeSettings]:
    """(HU canvas, geometry, settings) of one scan as ``trained`` searches it.

    The canvas grows where the lungs exceed it (sizes divisible by 2**(levels-1): the network is
    fully convolutional), so that no part of the lungs goes unsearched."""
    volumes = search_settings(trained)
    fit = 2 ** (int(trained["levels"]) - 1)
    hu, _target, geometry = make_detection_volume(image, None, source_spacing, None, volumes, fit)
    return hu, geometry, volumes
