"""Radiomics features of segmented nodules (pyradiomics), one row per nodule label.

The settings live in a versioned pyradiomics parameter file, package data of lungseg
(``src/lungseg/data/radiomics/params.yaml``; config key ``predict.radiomics_params``): features
are only comparable between runs with the same settings. The HU image and the label map become
SimpleITK images with the CT's patient geometry (:func:`lps_geometry`), so shape features are in
mm and the resampling to isotropic voxels happens where the scan lies.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import radiomics
import SimpleITK as sitk
import yaml
from radiomics.featureextractor import RadiomicsFeatureExtractor
from scipy import ndimage

from lungseg.core.errors import InputError, SettingsError
from lungseg.predict.geometry import lps_geometry
from lungseg.predict.measure import voxel_to_patient

log = logging.getLogger(__name__)
# pyradiomics logs every step of every extraction at INFO; only its warnings are worth reading.
logging.getLogger("radiomics").setLevel(logging.WARNING)
# ... and one of those says, for every nodule, that the symmetric GLCM's Sum Average is computed
# from its Joint Average: a fact, not a problem.
logging.getLogger("radiomics.glcm").addFilter(lambda record: "Sum Average" not in record.msg)

#: lungseg extracts features of the original image only (pyradiomics' image type "Original")
IMAGE_TYPE = "original"
#: source voxels kept past the box pyradiomics resamples: the B-spline prefilter's boundary
#: effect decays as 0.268**n, so 16 voxels leave the resampled values as on the whole scan
BSPLINE_MARGIN = 16
Params = str | os.PathLike[str] | Mapping[str, Any]


def load_params(params: Params) -> dict[str, Any]:
    """A pyradiomics parameter file (YAML) or an already loaded mapping, as a dict."""
    if isinstance(params, Mapping):
        loaded: Any = dict(params)
        where = "radiomics parameters"
    else:
        where = str(params)
        try:
            loaded = yaml.safe_load(Path(params).read_text())
        except OSError as error:
            raise InputError(
                f"{where}: cannot read the radiomics parameter file ({error})"
            ) from error
        except yaml.YAMLError as error:
            raise InputError(f"{where}: not valid YAML ({error})") from error
    if not isinstance(loaded, dict):
        raise SettingsError(f"{where}: expected a mapping of pyradiomics settings")
    image_types = {str(name).lower() for name in loaded.get("imageType") or {"Original": {}}}
    if image_types != {IMAGE_TYPE}:
        raise SettingsError(f"{where}: imageType must be Original only, got {sorted(image_types)}")
    return loaded


def feature_names(params: Params) -> list[str]:
    """The features the settings enable, as pyradiomics names them: ``original_<class>_<name>``."""
    settings = load_params(params)
    classes = radiomics.getFeatureClasses()
    names = []
    for cls, chosen in (settings.get("featureClass") or {}).items():
        if cls not in classes:
            raise SettingsError(f"unknown pyradiomics feature class {cls!r}")
        available = [
            n for n, deprecated in classes[cls].getFeatureNames().items() if not deprecated
        ]
        names += [f"{IMAGE_TYPE}_{cls}_{n}" for n in (chosen or sorted(available))]
    return names


def sitk_image(
    array_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
) -> sitk.Image:
    """A (z, y, x) array as a SimpleITK image placed in the patient (LPS) frame."""
    spacing_xyz, origin_lps, columns = lps_geometry(spacing, origin, direction)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))  # numpy zyx = ITK xyz
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_lps)
    image.SetDirection(tuple(columns.ravel().tolist()))
    return image


def crop_box(
    box: tuple[slice, ...],
    shape: Sequence[int],
    spacing: Sequence[float],
    settings: Mapping[str, Any],
) -> tuple[slice, ...]:
    """The part of the scan pyradiomics reads for a label whose voxels lie in ``box`` (z, y, x).

    pyradiomics resamples only a padded box around the label, but SimpleITK's B-spline
    interpolator first filters the whole input image: ~0.7 s a nodule on a 512 x 512 x 133 scan,
    ~2 s with the mask, for a nodule of a few thousand voxels. Cut to this box first, the result
    is the same: the resampling grid stays aligned to the scan's first voxel (the crop starts on
    a grid node: ``start * source / resampled spacing`` is whole, else at 0), and the crop
    reaches ``BSPLINE_MARGIN`` source voxels past the padded box.
    """
    setting = settings.get("setting") or {}
    resampled = setting.get("resampledPixelSpacing")  # x, y, z
    pad = float(setting.get("padDistance", 5))
    cut = []
    for axis, (part, size) in enumerate(zip(box, shape, strict=True)):
        start, stop = int(part.start), int(part.stop)
        target = float(resampled[2 - axis]) if resampled else 0.0
        # pyradiomics keeps the source spacing where it is asked to (0) and where the label is
        # one voxel thick
        ratio = float(spacing[axis]) / target if target and stop - start > 1 else 1.0
        reach = math.ceil((pad + 1) / ratio) + BSPLINE_MARGIN
        low, high = max(0, start - reach), min(int(size), stop + reach)
        while low > 0 and abs(low * ratio - round(low * ratio)) > 1e-6:
            low -= 1
        cut.append(slice(low, high))
    return tuple(cut)


def extract_features(
    image_hu_zyx: np.ndarray,
    label_map_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: Sequence[float],
    labels: Sequence[int],
    params: Params,
) -> pd.DataFrame:
    """One row per label: ``label``, then every ``original_*`` feature the settings enable.

    A label pyradiomics cannot describe (too few voxels, absent from the map) gets NaN features
    and a logged warning, so one speck does not lose the other nodules' rows.
    """
    if image_hu_zyx.shape != label_map_zyx.shape:
        raise ValueError(f"image {image_hu_zyx.shape} and label map {label_map_zyx.shape} differ")
    if not labels:
        return pd.DataFrame({"label": pd.Series([], dtype=int)})
    settings = load_params(params)
    names = feature_names(settings)
    extractor = RadiomicsFeatureExtractor(settings)
    label_map = label_map_zyx.astype(np.uint16, copy=False)
    boxes = ndimage.find_objects(label_map, max_label=max(int(v) for v in labels))
    rows = []
    for label in labels:
        row: dict[str, Any] = {"label": int(label)}
        box = boxes[int(label) - 1] if int(label) > 0 else None
        if box is None:  # absent: pyradiomics says so on the whole map
            box = tuple(slice(0, n) for n in label_map.shape)
        box = crop_box(box, label_map.shape, spacing, settings)
        first = voxel_to_patient(
            np.array([[part.start for part in box]]), spacing, origin, direction
        )
        geometry = (spacing, first[0, ::-1], direction)  # the crop's origin, z y x
        # float32: no rounding of the resampled HU
        image = sitk_image(image_hu_zyx[box].astype(np.float32), *geometry)
        mask = sitk_image(label_map[box], *geometry)
        try:
            result = extractor.execute(image, mask, label=int(label))
        except (ValueError, RuntimeError) as error:
            log.warning("label %d: no radiomics features (%s)", label, str(error).strip())
            row.update(dict.fromkeys(names, math.nan))
        else:
            row.update({name: float(result[name]) for name in names})
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", *names])
