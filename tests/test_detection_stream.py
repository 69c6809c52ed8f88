"""Detector training streams its scans from HDF5: peak memory with N and 10 N training volumes
(real files, real training in a fresh process) differs by less than 10 %, and a streamed patch
equals the same box of the whole volume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest
from detection_helpers import chest_volume

from lungseg.detection.scans import write_scan_table
from lungseg.detection.settings import DetectorSettings, VolumeSettings
from lungseg.detection.stream import TargetSpec, index_scans, new_digest
from lungseg.detection.volumes import detection_volume

SHAPE = [40, 96, 96]  # a detection volume of ~0.37 M voxels: 4.4 MB as float32 image + 2 targets


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    path, table = chest_volume(
        root / "volumes", "LIDC-IDRI-9201", "1.2.9.1", [((20.0, 46.0, 28.0), 10.0, True)]
    )
    table.to_csv(root / "own.csv", index=False)
    out = root / "template.h5"
    settings = VolumeSettings.from_config({"spacing": [2.5, 1.0, 1.0], "shape": SHAPE})
    detection_volume(
        volume=str(path), nodules=str(root / "own.csv"), detection=str(out), settings=settings
    )
    return out


def copies(template, root, n_train):
    """``n_train`` training volumes and one validation volume, each its own patient."""
    volumes, split = [], []
    for k in range(n_train + 1):
        patient, series = f"LIDC-IDRI-{9300 + k}", f"1.2.9.{100 + k}"
        path = root / patient / f"{series}.h5"
        path.parent.mkdir(parents=True)
        shutil.copy(template, path)
        with h5py.File(path, "r+") as f:
            f.attrs["patient_id"], f.attrs["series_uid"] = patient, series
        volumes.append(str(path))
        split.append({"patient_id": patient, "subset": "val" if k == n_train else "train"})
    pd.DataFrame(split).to_csv(root / "patients.csv", index=False)
    write_scan_table(
        volumes=volumes, patients=str(root / "patients.csv"), table=str(root / "scans.csv")
    )
    return volumes


TRAIN = textwrap.dedent(
    """
    import json, resource, sys, torch
    from lungseg.detection.settings import DetectorSettings
    from lungseg.detection.train import train_detector
    torch.set_num_threads(1)
    root, volumes, settings = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    train_detector(scans=root + "/scans.csv", volumes=volumes, metrics=root + "/out/metrics.csv",
                   best=root + "/out/best.pt", settings=DetectorSettings.from_config(settings))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """
)


def peak_mb(root, volumes, settings) -> float:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, str(root), json.dumps(volumes), json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["patch", "whole"])
def test_peak_memory_does_not_grow_with_the_training_scans(template, tmp_path, mode):
    settings = {
        "mode": mode, "arch": "unet", "channels": 2, "levels": 2, "epochs": 1,
        "batch_size": 2 if mode == "patch" else 1, "patch_size": [16, 32, 32],
        "patches_per_epoch": 4, "device": "cpu",
    }  # fmt: skip
    peaks = {}
    for n in (2, 20):
        root = tmp_path / str(n)
        volumes = copies(template, root, n)
        peaks[n] = peak_mb(root, volumes, settings)
    # all 20 scans in memory (float32 image + 2 target channels) would add ~80 MB over 2 scans
    assert abs(peaks[20] - peaks[2]) < 0.10 * peaks[2], peaks


def test_streamed_patch_equals_the_box_of_the_whole_scan(template, tmp_path):
    volumes = copies(template, tmp_path, 1)
    spec = TargetSpec(
        hu_min=-1000, hu_max=400, heatmap=True, sigma_vox=(1.6, 4, 4), balance_voxels=0
    )
    index = index_scans(volumes[:1], ["1.2.9.100"], spec, new_digest())
    assert index.shape == tuple(SHAPE) and len(index.centres[0]) == 1
    image, target = index.read(0)
    corner, size = (10, 20, 30), (16, 32, 32)
    patch_image, patch_target = index.read(0, corner, size)
    box = (slice(None), *(slice(c, c + s) for c, s in zip(corner, size, strict=True)))
    assert np.array_equal(patch_image.numpy(), image[box].numpy())
    assert np.allclose(patch_target.numpy(), target[box].numpy(), atol=1e-6)
    assert target[0].max() == pytest.approx(1.0)  # the heatmap's peak at the nodule centre
    centre = np.rint(index.centres[0][0]).astype(int)
    assert target[0][tuple(centre)] == pytest.approx(1.0)
    settings = DetectorSettings.from_config({"heatmap_sigma_mm": 4.0})
    assert settings.loss == "focal"  # the schema's default
