"""Radiomics features of synthetic spheres of known radius and HU, in patient geometry."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

import lungseg.predict.radiomics as radiomics_module
from lungseg.core.errors import InputError, SettingsError
from lungseg.evaluation.agreement import feature_class
from lungseg.predict.radiomics import crop_box, extract_features, feature_names, load_params
from lungseg.predict.settings import PredictSettings

PARAMS = Path(__file__).resolve().parents[1] / "src/lungseg/data/radiomics/params.yaml"
CLASSES = ["shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
RADIUS = 8.0  # mm
SPHERE_MM3 = 4 / 3 * math.pi * RADIUS**3
SOLID, GROUND_GLASS, LUNG = 40, -300, -800


def _rotation(z_degrees: float, x_degrees: float) -> np.ndarray:
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def spheres(spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """50 mm cube: label 1 a solid sphere (40 HU), label 2 a ground-glass one, in lung."""
    shape = tuple(round(50 / s) for s in spacing)
    mm = np.stack(np.indices(shape), axis=-1) * np.asarray(spacing)  # array frame, mm
    image = np.full(shape, LUNG, dtype=np.int16)
    labels = np.zeros(shape, dtype=np.uint8)
    for label, (centre, hu) in enumerate([((25, 15, 15), SOLID), ((25, 35, 35), GROUND_GLASS)], 1):
        inside = np.linalg.norm(mm - np.array(centre), axis=-1) <= RADIUS
        image[inside], labels[inside] = hu, label
    return image, labels


GEOMETRIES = [  # spacing (z, y, x), direction rows
    pytest.param((1.0, 1.0, 1.0), np.eye(3), id="isotropic-axial"),
    pytest.param((2.5, 0.7, 0.7), np.eye(3), id="thick-slices-axial"),
    pytest.param((1.5, 0.8, 0.6), _rotation(30, 20), id="anisotropic-oblique"),
]


@pytest.mark.parametrize(("spacing", "direction"), GEOMETRIES)
def test_sphere_volume_shape_and_hu(spacing, direction):
    image, labels = spheres(spacing)
    table = extract_features(
        image, labels, spacing, (-80.0, 33.0, -120.0), direction.ravel(), [1, 2], PARAMS
    )
    assert table["label"].tolist() == [1, 2]
    assert table.columns[0] == "label"
    assert all(name.startswith("original_") for name in table.columns[1:])
    assert not table.filter(like="diagnostics").columns.any()
    for _, row in table.iterrows():
        assert row["original_shape_MeshVolume"] == pytest.approx(SPHERE_MM3, rel=0.04)
        # a swapped spacing would make an ellipsoid: longer diameter, lower sphericity
        assert 2 * RADIUS <= row["original_shape_Maximum3DDiameter"] <= 2 * RADIUS + 3
        assert row["original_shape_Sphericity"] > 0.78
    hu = table.set_index("label")
    # the median is robust to the B-spline blending of the border on resampling
    assert hu.loc[1, "original_firstorder_Median"] == pytest.approx(SOLID, abs=4)
    assert hu.loc[2, "original_firstorder_Median"] == pytest.approx(GROUND_GLASS, abs=4)


def test_isotropic_mean_is_the_sphere_hu():
    """At 1 mm the resampling grid is the image's own: the mean is exact."""
    image, labels = spheres((1.0, 1.0, 1.0))
    table = extract_features(image, labels, (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), [2, 1], PARAMS)
    assert table["label"].tolist() == [2, 1]
    assert table["original_firstorder_Mean"].tolist() == pytest.approx([GROUND_GLASS, SOLID])


def test_tiny_or_absent_label_gives_a_nan_row_and_a_warning(caplog):
    image, labels = spheres((1.0, 1.0, 1.0))
    labels[2, 2, 2] = 3  # one voxel
    with caplog.at_level(logging.WARNING, logger="lungseg.predict.radiomics"):
        table = extract_features(
            image, labels, (1, 1, 1), (0, 0, 0), np.eye(3).ravel(), [1, 3, 4], PARAMS
        )
    assert table["label"].tolist() == [1, 3, 4]
    features = table.drop(columns="label")
    assert features.iloc[0].notna().all()
    assert features.iloc[1:].isna().all().all()
    assert "label 3" in caplog.text and "label 4" in caplog.text


def test_no_labels_an_empty_frame():
    image, labels = spheres((2.5, 0.7, 0.7))
    table = extract_features(image, labels, (2.5, 0.7, 0.7), (0, 0, 0), np.eye(3), [], PARAMS)
    assert list(table.columns) == ["label"] and len(table) == 0


def test_params_file_lists_the_seven_classes():
    text = PARAMS.read_text()
    assert any(line.startswith("# version:") for line in text.splitlines())
    params = load_params(PARAMS)
    assert list(params["featureClass"]) == CLASSES
    assert list(params["imageType"]) == ["Original"]
    assert params["setting"]["binWidth"] == 25
    assert params["setting"]["resampledPixelSpacing"] == [1, 1, 1]
    assert params["setting"]["interpolator"] == "sitkBSpline"
    names = feature_names(PARAMS)
    assert sorted({feature_class(name) for name in names}) == sorted(CLASSES)
    assert "original_shape_MeshVolume" in names and "original_glcm_Contrast" in names


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("original_shape_MeshVolume", "shape"),
        ("original_firstorder_10Percentile", "firstorder"),
        ("original_glcm_Idmn", "glcm"),
        ("original_gldm_LargeDependenceHighGrayLevelEmphasis", "gldm"),
        ("original_ngtdm_Busyness", "ngtdm"),
    ],
)
def test_feature_class(name, cls):
    assert feature_class(name) == cls


def test_bad_params_are_named(tmp_path):
    with pytest.raises(ValueError, match="no pyradiomics feature name"):
        feature_class("label")
    with pytest.raises(InputError, match="missing.yaml"):
        load_params(tmp_path / "missing.yaml")
    wavelet = tmp_path / "wavelet.yaml"
    wavelet.write_text(yaml.safe_dump({"imageType": {"Original": {}, "Wavelet": {}}}))
    with pytest.raises(SettingsError, match="wavelet.yaml"):
        load_params(wavelet)


def test_the_params_key_is_the_users_file_else_the_packaged_one(tmp_path, monkeypatch):
    resolve = PredictSettings.radiomics_params_file
    default = PredictSettings.from_config({}).radiomics_params
    assert default == "src/lungseg/data/radiomics/params.yaml"
    monkeypatch.chdir(tmp_path)  # outside the checkout: the packaged file of that name
    for value in (default, "radiomics/params.yaml"):
        assert resolve(value).read_bytes() == PARAMS.read_bytes()
        assert resolve(value).is_absolute()
    own = tmp_path / "radiomics" / "params.yaml"  # the user's own file wins
    own.parent.mkdir()
    own.write_text("imageType: {Original: {}}\n")
    assert resolve("radiomics/params.yaml") == Path("radiomics/params.yaml")
    assert resolve(own) == own
    for missing in ("config/radiomics/params.yaml", tmp_path / "none.yaml", "../data/x.yaml"):
        with pytest.raises(InputError, match=r"^predict\.radiomics_params: .*not found") as error:
            resolve(missing)
        assert str(missing) in str(error.value) and "\n" not in str(error.value)


ONE_MM = {"setting": {"resampledPixelSpacing": [1, 1, 1], "padDistance": 5}}
NATIVE = {"setting": {}}


@pytest.mark.parametrize(
    ("box", "shape", "spacing", "settings", "expected"),
    [
        # LIDC-IDRI-0571's first nodule: 2.5 x 0.5625 mm. Reach = ceil((5 + 1) / ratio) + 16:
        # z ratio 2.5 -> 19, start 30 (30 x 2.5 = 75, a node of the 1 mm grid); y, x ratio
        # 0.5625 -> 27, starts 96 and 160 (multiples of 16: 9/16 mm)
        pytest.param(
            ((49, 53), (123, 137), (196, 211)),
            (121, 512, 512),
            (2.5, 0.5625, 0.5625),
            ONE_MM,
            ((30, 72), (96, 164), (160, 238)),
            id="lidc-0571",
        ),
        # 0.742188 mm (a rounded decimal): no whole grid node before the start, so from 0
        pytest.param(
            ((60, 64), (200, 210), (300, 310)),
            (128, 512, 512),
            (2.5, 0.742188, 0.742188),
            ONE_MM,
            ((40, 83), (0, 235), (0, 335)),
            id="no-grid-node",
        ),
        # near the scan's ends: clipped to it
        pytest.param(
            ((2, 5), (1, 9), (500, 511)),
            (100, 512, 512),
            (1.0, 1.0, 1.0),
            ONE_MM,
            ((0, 27), (0, 31), (478, 512)),
            id="edges",
        ),
        # no resampling: ratio 1, reach 6 + 16 (z 40..50 -> 18..72)
        pytest.param(
            ((40, 50), (100, 120), (100, 120)),
            (100, 512, 512),
            (2.5, 0.7, 0.7),
            NATIVE,
            ((18, 72), (78, 142), (78, 142)),
            id="native-spacing",
        ),
        # a label one slice thick keeps the slice spacing in z (pyradiomics): ratio 1 there
        pytest.param(
            ((50, 51), (100, 110), (100, 110)),
            (100, 512, 512),
            (2.5, 1.0, 1.0),
            ONE_MM,
            ((28, 73), (78, 132), (78, 132)),
            id="one-slice",
        ),
    ],
)
def test_crop_box(box, shape, spacing, settings, expected):
    got = crop_box(tuple(slice(*b) for b in box), shape, spacing, settings)
    assert tuple((s.start, s.stop) for s in got) == expected


# Spacings whose 1 mm grid never falls halfway between two scan voxels. Where it does (2.5,
# 1.5, 0.7 mm, ...), pyradiomics' nearest-neighbour mask resampling meets exact ties, which float
# rounding breaks either way, on the whole scan as on the crop (docs/predict.md).
NO_TIES = [
    pytest.param((1.0, 1.0, 1.0), np.eye(3), id="isotropic-axial"),
    pytest.param((2.0, 0.8, 0.6), np.eye(3), id="two-mm-axial"),
    pytest.param((2.0, 0.6, 0.8), _rotation(30, 20), id="two-mm-oblique"),
]


@pytest.mark.parametrize(("spacing", "direction"), NO_TIES)
def test_features_on_the_crop_equal_those_on_the_whole_scan(spacing, direction, monkeypatch):
    """A noisy scan with the spheres 60 mm from every side: the crop is far smaller than it."""
    image, labels = spheres(spacing)
    pad = [(round(60 / s),) * 2 for s in spacing]
    size = [n + 2 * p[0] for n, p in zip(image.shape, pad, strict=True)]
    noise = np.random.default_rng(0).normal(0, 30, size)
    image = (np.pad(image, pad, constant_values=LUNG) + noise).astype(np.int16)
    labels = np.pad(labels, pad)
    where = (image, labels, spacing, (-80.0, 33.0, -120.0), direction.ravel(), [2, 1], PARAMS)
    cropped = extract_features(*where)
    kept = crop_box(ndimage.find_objects(labels)[0], labels.shape, spacing, load_params(PARAMS))
    assert np.prod([s.stop - s.start for s in kept]) < labels.size / 4
    monkeypatch.setattr(radiomics_module, "crop_box", lambda box, shape, *_: whole(shape))
    on_whole = extract_features(*where)
    pd.testing.assert_frame_equal(cropped, on_whole, rtol=1e-9)


def whole(shape):
    return tuple(slice(0, n) for n in shape)
