"""An installed lungseg, not the checkout: a non-editable wheel runs ``lungseg predict`` anywhere.

The wheel is built from the repository's working tree (pyproject.toml, README.md and src/,
copied into a temporary folder so that setuptools' build/ folder is neither left in the
checkout nor reused from an earlier build), without the network (``--no-deps
--no-build-isolation``: the venv's setuptools), and installed with ``pip install --target``.
The installed ``lungseg`` console script then predicts a small real DICOM series with small real
bundles (tests/scan_helpers.py), from a working directory outside the repository, with
``PYTHONPATH`` holding only the install: the process checks that lungseg, its config schema and
its radiomics parameter file all come from the install, not from the editable install of .venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dicom_writer import write_series
from scan_helpers import tiny_bundles

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "src" / "lungseg" / "data"
# every data file: the config schema, its sections (schema/*.yaml), the radiomics parameters
PACKAGED = tuple(sorted(p.relative_to(REPO / "src").as_posix() for p in DATA.rglob("*.yaml")))
# In the new process: where lungseg and its data files come from, then the installed console
# script itself (runpy), with the command line of sys.argv.
DRIVER = """
import json, runpy, sys
from pathlib import Path
import lungseg
from lungseg.core.settings import SCHEMA_PATH, load_schema
from lungseg.predict.settings import PredictSettings
site = Path(sys.argv.pop(1)).resolve()
default = load_schema()["properties"]["predict"]["properties"]["radiomics_params"]["default"]
where = {
    "lungseg": lungseg.__file__,
    "schema": str(SCHEMA_PATH),
    "radiomics_params": str(PredictSettings.radiomics_params_file(default).resolve()),
}
print("WHERE " + json.dumps(where), flush=True)
for name, path in where.items():
    assert Path(path).resolve().is_relative_to(site), f"{name} from {path}, not from {site}"
script = sys.argv[0] = str(site / "bin" / "lungseg")
runpy.run_path(script, run_name="__main__")
"""


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"},  # offline: nothing may be downloaded
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(
        REPO / "src",
        source / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dist = tmp / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(dist), cwd=tmp)
    (wheel,) = dist.glob("lungseg-*.whl")
    site = tmp / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp)
    return wheel, site


@pytest.mark.slow  # builds and installs a wheel (~2 s), then predicts in a new process (~6 s)
def test_the_wheel_holds_the_package_data(installed):
    wheel, site = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lungseg/data/schema/detection.yaml" in PACKAGED  # the section files are data too
    assert set(PACKAGED) <= names
    assert "lungseg/cli.py" in names and not any(n.startswith("src/") for n in names)
    for name in PACKAGED:  # the versioned files, byte for byte
        assert (site / name).read_bytes() == (REPO / "src" / name).read_bytes()
    assert (site / "bin" / "lungseg").is_file()


@pytest.mark.slow  # shares the wheel above
def test_the_installed_wheel_predicts_outside_the_checkout(installed, tmp_path):
    _, site = installed
    # 208 x 416 x 416 mm: at least the detector's canvas (24 x 48 x 48 at 8 mm), so that every
    # candidate lies in the scan (a smaller scan can crash segment.py, see the report of issue 29)
    image = np.full((32, 64, 64), -800, dtype=np.int16)  # lung
    z, y, x = np.ogrid[:32, :64, :64]
    image[(z - 16) ** 2 + (y - 32) ** 2 + (x - 30) ** 2 <= 4] = 40  # a 13 mm nodule
    series = tmp_path / "scan"
    uid = write_series(series, image, step=6.5, pixel_spacing=(6.5, 6.5)).series_uid
    detector, segmenter = tiny_bundles(tmp_path / "bundles", threshold=0.0)  # keep candidates
    work = tmp_path / "work"  # outside the repository, no config/ or src/ of lungseg here
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    env = {k: v for k, v in os.environ.items() if k not in ("LUNGSEG_SCHEMA", "PYTHONHOME")}
    env["PYTHONPATH"] = str(site)
    command = [
        sys.executable, "-c", DRIVER, str(site), "predict", str(series), "--out", "out",
        "--detector", str(detector), "--segmenter", str(segmenter), "--device", "cpu",
        "--threads", "1",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    where = json.loads(
        next(line for line in result.stdout.splitlines() if line.startswith("WHERE "))[6:]
    )
    assert Path(where["lungseg"]).resolve().is_relative_to(site.resolve())

    out = work / "out" / uid
    summary = json.loads((out / "summary.json").read_text())
    for name in ("nodules.csv", "image.nii.gz", "nodules.nii.gz", "radiomics.csv", "overview.png"):
        assert (out / name).is_file(), name
    assert (out / "nodules.seg.dcm").is_file() == (summary["nodules"] > 0)
    params = Path(summary["radiomics_params"])  # what the run itself used
    assert params.resolve() == (site / "lungseg/data/radiomics/params.yaml").resolve()
    assert summary["radiomics_params_sha256"] == hashlib.sha256(params.read_bytes()).hexdigest()
    assert [s["step"] for s in summary["steps"]][:2] == ["read", "detect"]
