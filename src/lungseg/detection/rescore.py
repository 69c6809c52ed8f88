"""Second stage of detection: a crop model re-scores stage-1 candidates (LUNA16's false-positive
reduction).

A stage-1 detector at 4 mm ranks most nodules among its top candidates but not at the top, and
its centres are off by up to a voxel (4 mm). The second stage looks at each candidate again at
the crop models' resolution: a crop of ``crop_size`` voxels at ``crop_spacing`` mm (cubic
B-spline, as :mod:`lungseg.dataset.crops`) centred on the candidate goes through a small U-Net
trained to segment the cohort nodules in such crops. Its answer replaces the candidate's
probability and centre (:func:`crop_component`):

- the component of probability >= 0.5 that holds the crop centre, or the nearest one whose
  nearest voxel lies within ``REACH`` of the centre: probability = its mean probability (>= 0.5),
  centre = its probability-weighted centroid, ``diameter_mm`` = the sphere of its volume;
- no such component: probability = the highest probability within ``REACH`` of the centre
  (< 0.5), centre and diameter unchanged.

The candidate's final probability is that score times stage 1's probability to the power
``rescore_stage1_weight`` (0.5: a geometric-mean-like blend; 0: the crop model alone): crops
far down stage 1's list that merely look nodule-like then stay below the confident ones. With
``rescore_shape_weight`` s > 0 it is also multiplied by the component's :func:`compactness` to
the power s: the crop model segments a piece of many vessels crossing a crop, and such a piece
is elongated where a nodule is round.

Training crops (:func:`scan_samples`) of each scan: every cohort nodule at its centroid and at
``positive_copies`` centres jittered uniformly by up to ``jitter_mm`` per axis, and the given
stage-1 candidates (the ``rescore_negatives`` highest of a training scan; hard negatives, and a
candidate on a nodule is a positive crop with its nodule off centre). Target = the cohort
nodules' voxels of the crop; candidates on other annotated findings only (LUNA16's irrelevant
findings) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from lungseg.dataset.boxes import padded_box
from lungseg.dataset.crops import AIR_HU, CropGeometry, crop_geometry, cut_crop, source_box

#: label of the cohort nodules and of the other annotated findings in a scan's class map
COHORT, OTHER = 1, 2
#: a component counts for the candidate when it comes this close to the crop centre (a quarter
#: of the crop along each axis: 8 mm for the default 32 voxels at 1 mm)
REACH = 0.25
#: a crop voxel belongs to the candidate's component at this crop-model probability
COMPONENT = 0.5


def class_map(mask: np.ndarray, cohort_labels: Sequence[int]) -> np.ndarray:
    """uint8 map of a scan's label map: :data:`COHORT` for the cohort nodules' labels,
    :data:`OTHER` for every other annotated finding, 0 elsewhere."""
    classes = np.where(mask > 0, OTHER, 0).astype(np.uint8)
    classes[np.isin(mask, np.asarray(list(cohort_labels), dtype=mask.dtype))] = COHORT
    return classes


def crop_at(
    image: np.ndarray,
    classes: np.ndarray | None,
    spacing: Sequence[float],
    centre: Sequence[float],
    size: Sequence[int],
    target_spacing: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CropGeometry]:
    """``(image int16, cohort uint8, other uint8, geometry)`` of the crop centred on ``centre``
    (scan voxels); air and no finding outside the scan; ``classes`` None: no masks needed."""
    geometry = crop_geometry(centre, size, spacing, target_spacing)
    lo, hi = source_box(geometry)
    image_box = padded_box(image, lo, hi, AIR_HU)
    if classes is None:
        class_box = np.zeros(image_box.shape, np.uint8)
        image_crop, cohort, other = cut_crop(image_box, class_box, geometry, lo, COHORT, "nearest")
    else:
        class_box = padded_box(classes, lo, hi, 0)
        image_crop, cohort, other = cut_crop(image_box, class_box, geometry, lo, COHORT, "linear")
    return image_crop, cohort, other, geometry


def _central(size: Sequence[int]) -> tuple[slice, ...]:
    """The crop voxels within ``REACH`` of the centre along every axis (:func:`crop_component`)."""
    return tuple(
        slice(math.ceil((n - 1) / 2 - REACH * n), math.floor((n - 1) / 2 + REACH * n) + 1)
        for n in size
    )


def scan_samples(
    image: np.ndarray,
    classes: np.ndarray,
    spacing: Sequence[float],
    nodule_centres: np.ndarray,
    candidate_centres: np.ndarray,
    *,
    size: Sequence[int],
    target_spacing: Sequence[float],
    positive_copies: int,
    jitter_mm: float,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Training crops of one scan (module docstring): images, cohort masks, and a row each
    (``kind``: nodule, jittered or candidate; ``center_z, center_y, center_x``: scan voxels)."""
    centres: list[tuple[str, np.ndarray]] = []
    step = np.asarray(jitter_mm, dtype=float) / np.asarray(spacing, dtype=float)
    for centre in np.asarray(nodule_centres, dtype=float).reshape(-1, 3):
        centres.append(("nodule", centre))
        for _ in range(positive_copies):
            centres.append(("jittered", centre + rng.uniform(-1.0, 1.0, 3) * step))
    centres += [("candidate", c) for c in np.asarray(candidate_centres, float).reshape(-1, 3)]
    images, masks, rows = [], [], []
    middle = _central(size)
    for kind, centre in centres:
        crop, cohort, other, _ = crop_at(image, classes, spacing, centre, size, target_spacing)
        if kind == "candidate" and other[middle].any() and not cohort[middle].any():
            continue  # on an irrelevant finding only: LUNA16 ignores such candidates
        images.append(crop)
        masks.append(cohort)
        rows.append(
            {
                "kind": kind,
                "center_z": float(centre[0]),
                "center_y": float(centre[1]),
                "center_x": float(centre[2]),
                "mask_voxels": int(cohort.sum()),
            }
        )
    return images, masks, rows


def compactness(component: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """``sqrt(smallest / largest)`` second moment of a component (a boolean array) taken as the
    union of its voxel boxes (each adds ``spacing**2 / 12`` per axis): 1 for a ball or a single
    voxel, ``1/n`` for a straight line of ``n`` voxels; a vessel crossing a crop is near 0.
    Empty: 0."""
    points = np.argwhere(component) * np.asarray(spacing, dtype=float)
    if len(points) == 0:
        return 0.0
    moments = np.cov(points.T, bias=True).reshape(3, 3) + np.diag(np.square(spacing)) / 12.0
    eigen = np.linalg.eigvalsh(moments)
    return float(math.sqrt(max(eigen[0], 0.0) / eigen[-1]))


def crop_component(probability: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """``(score, centre, component)`` of one candidate's crop probability (module docstring):
    ``centre`` in crop voxels (z, y, x) and ``component`` (boolean, crop shape), or both None."""
    shape = np.asarray(probability.shape)
    middle = (shape - 1) / 2.0
    labels, n = ndimage.label(probability >= COMPONENT, structure=np.ones((3, 3, 3), bool))
    if n:
        coords = np.argwhere(labels > 0)
        offset = np.abs(coords - middle) / (REACH * shape)
        near = offset.max(axis=1) <= 1.0
        if near.any():
            distance = ((coords[near] - middle) ** 2).sum(axis=1)
            nearest = coords[near][np.argmin(distance)]
            component = labels == labels[tuple(nearest)]
            weights = probability[component].astype(np.float64)
            centre = (np.argwhere(component) * weights[:, None]).sum(axis=0) / weights.sum()
            return float(weights.mean()), centre, component
    return float(probability[_central(probability.shape)].max()), None, None


def trained_shape_weight(trained: dict) -> float:
    """A trained second stage's ``rescore_shape_weight``; 0 for one trained before the key
    existed (it was validated and its operating point chosen without the shape term)."""
    return float(trained.get("rescore_shape_weight") or 0.0)


def to_scan_voxels(geometry: CropGeometry, crop_voxel: np.ndarray) -> np.ndarray:
    """Scan voxel coordinates (z, y, x) of a point given in crop voxels."""
    return np.array(
        [geometry.coordinates(a)[0] + crop_voxel[a] * geometry.step[a] for a in range(3)]
    )


def rescore_scan(
    image: np.ndarray,
    spacing: Sequence[float],
    candidates: pd.DataFrame,
    probabilities_of,
    size: Sequence[int],
    target_spacing: Sequence[float],
    stage1_weight: float,
    shape_weight: float = 0.0,
) -> pd.DataFrame:
    """``candidates`` (``center_z, center_y, center_x`` in scan voxels, ``probability``,
    ``diameter_mm``) with centre and diameter from the second stage and probability
    ``r * c ** shape_weight * p ** stage1_weight`` (``r`` the crop score, ``c`` its component's
    :func:`compactness`, 1 without a component; ``p`` stage 1's probability), highest first.
    ``probabilities_of``: HU crops ``(N, D, H, W)`` -> probabilities."""
    out = candidates.copy().reset_index(drop=True)
    if out.empty:
        return out
    crops, geometries = [], []
    for row in out.itertuples():
        centre = (float(row.center_z), float(row.center_y), float(row.center_x))
        crop, _, _, geometry = crop_at(image, None, spacing, centre, size, target_spacing)
        crops.append(crop)
        geometries.append(geometry)
    probability = probabilities_of(np.stack(crops))
    voxel_mm3 = float(np.prod(target_spacing))
    for i, (crop_probability, geometry) in enumerate(zip(probability, geometries, strict=True)):
        score, centre, component = crop_component(crop_probability)
        if shape_weight and component is not None:
            score *= compactness(component, target_spacing) ** shape_weight
        out.loc[i, "probability"] = score * float(out.loc[i, "probability"]) ** stage1_weight
        if component is not None:
            out.loc[i, ["center_z", "center_y", "center_x"]] = to_scan_voxels(geometry, centre)
            voxels = int(component.sum())
            out.loc[i, "diameter_mm"] = (6.0 * voxels * voxel_mm3 / math.pi) ** (1.0 / 3.0)
    return out.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


__all__ = [
    "COHORT",
    "COMPONENT",
    "OTHER",
    "REACH",
    "class_map",
    "compactness",
    "crop_at",
    "crop_component",
    "padded_box",
    "rescore_scan",
    "scan_samples",
    "trained_shape_weight",
    "to_scan_voxels",
]
