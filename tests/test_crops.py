"""Tumour-centred crops: centring (odd/even sizes, borders), padding, resampling, real volumes."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from ingest_helpers import convert_keywords, index_keywords
from scipy import ndimage

from lungseg.cli import main
from lungseg.dataset.crops import AIR_HU, CONTRACT_COLUMNS, crop_geometry, write_crops
from lungseg.dataset.settings import CropSettings
from lungseg.dataset.split import REQUIRED_COLUMNS
from lungseg.figures.crops import crops_overview_figure, pick_rows, save_crops_overview
from lungseg.ingest.convert import convert_series, series_paths
from lungseg.ingest.index import write_index
from lungseg.ingest.nodules import merge_nodule_tables
from lungseg.ingest.settings import CohortCriteria
from lungseg.io.hdf5 import read_volume, write_volume

PATIENT, SERIES = "LIDC-IDRI-9001", "1.2.826.0.1.3680043.8.498.7001"


def crop_keywords(**given) -> dict:
    """write_crops' settings: the schema's (CropSettings), native spacing unless ``given``."""
    settings = CropSettings.from_config({}).to_config()
    keywords = {key: settings[key] for key in ("size", "mask_interpolation", "compression")}
    return {**keywords, "target_spacing": None, **given}


def nodule_rows(mask: np.ndarray, patient: str, series: str, diameters: dict) -> pd.DataFrame:
    """nodules.csv rows computed from a label map as ingestion does (centre of mass, bbox)."""
    rows = []
    for label in range(1, int(mask.max()) + 1):
        region = mask == label
        centroid = ndimage.center_of_mass(region)
        (box,) = ndimage.find_objects(region.astype(np.uint8))
        rows.append(
            {
                "nodule_id": f"{patient}_{series[-8:]}_{label:02d}",
                "patient_id": patient,
                "series_uid": series,
                "label": label,
                "n_readers": 4,
                **{f"centroid_{a}": c for a, c in zip("zyx", centroid, strict=True)},
                **{f"bbox_{a}0": s.start for a, s in zip("zyx", box, strict=True)},
                **{f"bbox_{a}1": s.stop for a, s in zip("zyx", box, strict=True)},
                "diameter_mm": diameters.get(label, 5.0),
                "series_status": "ok",
                "in_cohort": True,
            }
        )
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def physical_grid(shape, spacing) -> list[np.ndarray]:
    return np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )


def write_case(tmp_path, shape, spacing, centres_mm, radii_mm, image=None) -> tuple:
    """A volume with spherical nodules (label k at centres_mm[k-1]) and its nodules.csv."""
    grid = physical_grid(shape, spacing)
    mask = np.zeros(shape, dtype=np.uint8)
    for label, (centre, radius) in enumerate(zip(centres_mm, radii_mm, strict=True), start=1):
        distance = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) ** 0.5
        mask[distance <= radius] = label
    if image is None:
        image = np.random.default_rng(0).integers(-1000, 400, shape).astype(np.int16)
    volumes = tmp_path / "volumes"
    attrs = {"patient_id": PATIENT, "series_uid": SERIES, "spacing": spacing}
    write_volume(volumes / PATIENT / f"{SERIES}.h5", image, mask, attrs)
    nodules_csv = tmp_path / "nodules.csv"
    diameters = {k: 2 * r for k, r in enumerate(radii_mm, start=1)}
    nodule_rows(mask, PATIENT, SERIES, diameters).to_csv(nodules_csv, index=False)
    return nodules_csv, volumes, image, mask


def read_crops(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as file:
        return {name: file[name][()] for name in ("image", "mask", "other")}


def padded_cut(volume: np.ndarray, start, size, fill) -> np.ndarray:
    """volume[start : start + size] with ``fill`` outside, by padding (independent of crops.py)."""
    pad = max(size)
    padded = np.pad(volume, pad, constant_values=fill)
    return padded[tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size, strict=True))]


# Nodules in the interior, touching z = 0, at the far x border, and at a y/x corner.
NATIVE_SHAPE, NATIVE_SPACING = (30, 40, 50), (2.5, 0.7, 0.8)
NATIVE_CENTRES = [(37.0, 14.0, 20.0), (1.0, 12.0, 18.0), (40.0, 20.0, 39.0), (60.0, 0.5, 0.3)]
NATIVE_RADII = [4.0, 3.0, 2.5, 2.0]


@pytest.mark.parametrize("size", [(5, 7, 9), (6, 8, 10), (8, 8, 8), (3, 16, 15)])
def test_native_crops_are_centred_padded_and_equal_the_volume_cut(tmp_path, size):
    nodules_csv, volumes, image, mask = write_case(
        tmp_path, NATIVE_SHAPE, NATIVE_SPACING, NATIVE_CENTRES, NATIVE_RADII
    )
    table = write_crops(
        nodules_csv,
        volumes,
        tmp_path / "c.h5",
        tmp_path / "c.csv",
        **crop_keywords(size=size, target_spacing=(None, None, None)),
    )
    crops = read_crops(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as file:
        assert file.attrs["image_interpolation"] == "none"  # copied, not interpolated
    nodules = pd.read_csv(nodules_csv)
    assert len(table) == len(nodules) == 4
    assert crops["image"].shape == (4, *size) and crops["image"].dtype == np.int16
    for i, row in table.iterrows():
        centre = np.array([row[f"center_{a}"] for a in "zyx"])
        centroid = nodules.loc[i, ["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
        assert np.all(np.abs(centre - centroid) <= 0.5 + 1e-9), (size, centre, centroid)
        start = np.rint(centre - (np.array(size) - 1) / 2).astype(int)
        assert np.allclose(start + (np.array(size) - 1) / 2, centre)  # a whole-voxel cut
        label = int(row["label"])
        cut_mask = padded_cut(mask, start, size, 0)
        np.testing.assert_array_equal(crops["mask"][i], cut_mask == label)
        np.testing.assert_array_equal(crops["other"][i], (cut_mask > 0) & (cut_mask != label))
        np.testing.assert_array_equal(crops["image"][i], padded_cut(image, start, size, AIR_HU))
        assert (row["outside_fraction"] > 0) == bool(
            np.any(start < 0) or np.any(start + size > NATIVE_SHAPE)
        )
        assert [row[f"spacing_{a}"] for a in "zyx"] == list(NATIVE_SPACING)
    border = table.iloc[[1, 3]]
    assert (border["outside_fraction"] > 0).all()  # padded, not shifted inwards
    assert list(table.columns[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS


@pytest.mark.parametrize(
    ("centroid", "size", "expected_centre"),
    [
        ((10.0, 10.0, 10.0), (5, 6, 1), (10.0, 10.5, 10.0)),
        ((10.49, 10.5, 10.51), (5, 5, 5), (10.0, 11.0, 11.0)),
        ((10.49, 10.5, 10.51), (4, 4, 4), (10.5, 10.5, 10.5)),
        ((0.0, -0.4, 99.2), (3, 2, 7), (0.0, -0.5, 99.0)),
    ],
)
def test_native_geometry_rounds_to_the_nearest_voxel_run(centroid, size, expected_centre):
    geometry = crop_geometry(centroid, size, (1.0, 1.0, 1.0))
    assert geometry.centre == pytest.approx(expected_centre)
    assert all(abs(c - e) <= 0.5 for c, e in zip(centroid, geometry.centre, strict=True))


RAMP = (4.0, 2.0, 1.0)  # HU per mm along z, y, x: a linear image the spline must reproduce


@pytest.mark.parametrize(
    ("target", "size", "interpolation"),
    [
        ((1.0, 1.0, 1.0), (24, 24, 24), "linear"),
        ((1.0, 1.0, 1.0), (25, 25, 25), "nearest"),
        ((0.6, 0.6, 0.6), (40, 41, 40), "linear"),
        ((2.0, None, None), (12, 36, 36), "linear"),
    ],
)
def test_resampling_preserves_physical_size_and_position(tmp_path, target, size, interpolation):
    shape, spacing = (28, 80, 80), (2.5, 0.7, 0.7)
    grid = physical_grid(shape, spacing)
    image = np.rint(sum(r * g for r, g in zip(RAMP, grid, strict=True)) - 900).astype(np.int16)
    radius = 7.0
    nodules_csv, volumes, _, mask = write_case(
        tmp_path, shape, spacing, [(33.0, 28.0, 27.0)], [radius], image
    )
    table = write_crops(
        nodules_csv,
        volumes,
        tmp_path / "c.h5",
        tmp_path / "c.csv",
        **crop_keywords(size=size, target_spacing=target, mask_interpolation=interpolation),
    )
    crop = read_crops(tmp_path / "c.h5")
    row = table.iloc[0]
    crop_spacing = np.array([row[f"spacing_{a}"] for a in "zyx"])
    expected_spacing = [t if t is not None else s for t, s in zip(target, spacing, strict=True)]
    assert crop_spacing == pytest.approx(expected_spacing)
    # Physical size: nodule volume and extent along each axis are kept.
    source_volume = (mask == 1).sum() * np.prod(spacing)
    crop_volume = crop["mask"][0].sum() * np.prod(crop_spacing)
    assert crop_volume == pytest.approx(source_volume, rel=0.1)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        source_extent = np.any(mask == 1, axis=others).sum() * spacing[axis]
        crop_extent = np.any(crop["mask"][0], axis=others).sum() * crop_spacing[axis]
        assert abs(crop_extent - source_extent) <= max(spacing[axis], crop_spacing[axis]) + 1e-6
    # Position: each crop voxel holds the ramp at its physical place, the centroid at the centre.
    centroid_mm = np.array([row[f"centroid_{a}"] for a in "zyx"]) * spacing
    centre_mm = np.array([row[f"center_{a}"] for a in "zyx"]) * spacing
    offsets = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, crop_spacing, strict=True)]
    positions = np.meshgrid(
        *(c + o for c, o in zip(centre_mm, offsets, strict=True)), indexing="ij"
    )
    expected = sum(r * p for r, p in zip(RAMP, positions, strict=True)) - 900
    np.testing.assert_allclose(crop["image"][0], expected, atol=1.0)
    for axis, t in enumerate(target):
        if t is not None:
            assert centre_mm[axis] == pytest.approx(centroid_mm[axis], abs=1e-4)
    assert bool(row["fits_in_crop"])


def test_crops_cli_is_deterministic_and_writes_chunked_crops(tmp_path):
    nodules_csv, volumes, _, _ = write_case(
        tmp_path, NATIVE_SHAPE, NATIVE_SPACING, NATIVE_CENTRES, NATIVE_RADII
    )
    outputs = []
    for run in ("a", "b"):
        files = [str(p) for p in sorted(volumes.rglob("*.h5"))]
        argv = ["crops", "--nodules", str(nodules_csv), "--volumes", *files]
        argv += ["--crops", str(tmp_path / run / "crops.h5")]
        argv += ["--table", str(tmp_path / run / "crops.csv"), "--size", "[8, 12, 12]"]
        argv += ["--target_spacing", "[1.5, null, 1.0]"]
        assert main(argv) == 0
        outputs.append(read_crops(tmp_path / run / "crops.h5"))
    for name in ("image", "mask", "other"):
        np.testing.assert_array_equal(outputs[0][name], outputs[1][name])
    assert (tmp_path / "a" / "crops.csv").read_text() == (tmp_path / "b" / "crops.csv").read_text()
    with h5py.File(tmp_path / "a" / "crops.h5", "r") as file:
        assert file["image"].chunks == (1, 8, 12, 12)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("no_volume", FileNotFoundError, "not found"),
        ("wrong_label", ValueError, "no voxel of label 9"),
        ("outside", ValueError, "lies outside"),
    ],
)
def test_bad_input_names_the_file(tmp_path, change, error, message):
    nodules_csv, volumes, _, _ = write_case(
        tmp_path, NATIVE_SHAPE, NATIVE_SPACING, NATIVE_CENTRES[:1], NATIVE_RADII[:1]
    )
    table = pd.read_csv(nodules_csv)
    if change == "no_volume":
        (volumes / PATIENT / f"{SERIES}.h5").unlink()
    elif change == "wrong_label":
        table["label"] = 9
    else:
        table["centroid_x"] = 80.0
    table.to_csv(nodules_csv, index=False)
    with pytest.raises(error, match=message) as raised:
        write_crops(
            nodules_csv,
            volumes,
            tmp_path / "c.h5",
            tmp_path / "c.csv",
            **crop_keywords(size=(4, 4, 4)),
        )
    assert f"{SERIES}.h5" in str(raised.value)
    assert not (tmp_path / "c.h5").exists()  # atomic: nothing half-written


@pytest.fixture(scope="module")
def sample_nodules(sample_lidc, tmp_path_factory):
    """The sample scans indexed, converted and merged into nodules.csv as the workflow does."""
    base = tmp_path_factory.mktemp("crops_sample")
    series = write_index(
        sample_lidc.lidc_root, base / "series.csv", base / "files.csv", **index_keywords()
    )
    tables = []
    for row in series.itertuples():
        out = base / "volumes" / row.patient_id
        paths = series_paths(base / "files.csv", row.series_uid)
        tables.append(out / f"{row.series_uid}.nodules.csv")
        convert_series(paths, out / f"{row.series_uid}.h5", tables[-1], **convert_keywords())
    # The sample scans have 3 and 5 mm slices; admit them so that the cohort is not empty.
    nodules = merge_nodule_tables(
        tables,
        base / "series.csv",
        CohortCriteria.from_config(
            dict(max_slice_thickness=5.0, min_readers=3, min_diameter_mm=3.0)
        ),
    )
    nodules.to_csv(base / "nodules.csv", index=False)
    return base


def test_crops_of_real_sample_volumes(sample_nodules, tmp_path):
    nodules = pd.read_csv(sample_nodules / "nodules.csv", dtype={"series_uid": str})
    cohort = nodules[(nodules["series_status"] == "ok") & nodules["in_cohort"]]
    assert 0 < len(cohort) < len(nodules)  # a nodule with < 3 readers is left out
    size = (16, 32, 32)
    table = write_crops(
        sample_nodules / "nodules.csv",
        sample_nodules / "volumes",
        tmp_path / "crops.h5",
        tmp_path / "crops.csv",
        **crop_keywords(size=size),
    )
    assert table["nodule_id"].tolist() == sorted(cohort["nodule_id"])
    crops = read_crops(tmp_path / "crops.h5")
    for i, row in table.iterrows():
        path = sample_nodules / "volumes" / row["patient_id"] / f"{row['series_uid']}.h5"
        start = [
            int(round(row[f"center_{a}"] - (n - 1) / 2)) for a, n in zip("zyx", size, strict=True)
        ]
        region = tuple(slice(max(0, s), s + n) for s, n in zip(start, size, strict=True))
        image, mask, _ = read_volume(path, region)
        inside = tuple(
            slice(r.start - s, r.start - s + m)
            for r, s, m in zip(region, start, image.shape, strict=True)
        )
        np.testing.assert_array_equal(crops["mask"][i][inside], mask == row["label"])
        np.testing.assert_array_equal(crops["image"][i][inside], image)
        assert row["mask_voxels"] > 0
    resampled = write_crops(
        sample_nodules / "nodules.csv",
        sample_nodules / "volumes",
        tmp_path / "iso.h5",
        tmp_path / "iso.csv",
        **crop_keywords(size=(24, 24, 24), target_spacing=(1.0, 1.0, 1.0)),
    )
    assert (resampled["mask_voxels"] > 0).all()
    save_crops_overview(tmp_path / "iso.h5", tmp_path / "iso.csv", tmp_path / "overview.png")
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_overview_figure_shows_a_spread_of_sizes(tmp_path):
    nodules_csv, volumes, _, _ = write_case(
        tmp_path, NATIVE_SHAPE, NATIVE_SPACING, NATIVE_CENTRES, NATIVE_RADII
    )
    write_crops(
        nodules_csv,
        volumes,
        tmp_path / "c.h5",
        tmp_path / "c.csv",
        **crop_keywords(size=(8, 16, 16)),
    )
    split = pd.read_csv(tmp_path / "c.csv")[["nodule_id", "patient_id"]].assign(subset="val")
    split.to_csv(tmp_path / "split.csv", index=False)
    figure = crops_overview_figure(tmp_path / "c.h5", tmp_path / "c.csv", tmp_path / "split.csv", 3)
    titled = [axes for axes in figure.axes if axes.get_title()]
    assert len(titled) == 3 and all("val" in axes.get_title() for axes in titled)
    assert pick_rows(np.array([9.0, 3.0, 5.0, 20.0, 7.0]), 3).tolist() == [1, 4, 3]
