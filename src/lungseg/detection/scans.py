"""The detection scan table (every detection volume and its subset of the patient split), and
the one reader of a detection volume's geometry.

``results/detection_volumes/scans.csv`` (rule ``detection_scans``): one row per detection volume,
``patient_id, series_uid, subset`` (``train``/``val`` from results/split/patients.csv, which
places every scanned patient, with cohort nodules or without; ``none`` for a patient it does not
list), ``path``,
``n_nodules, n_ignored`` (cohort nodules and irrelevant findings in the target), the canvas
geometry ``step_z/y/x, offset_z/y/x`` (source voxel = offset + canvas voxel * step) and the source
geometry ``source_spacing_z/y/x, source_origin_z/y/x, source_direction`` (9 numbers, row-major,
printed with 9 significant digits) that turns source voxels into patient millimetres.

The geometry columns are a record for people reading the table; the code never parses them back.
Geometry has one source: the detection volume's HDF5 attrs (``step, offset, source_spacing,
source_origin, source_direction``), which :func:`volume_geometry` reads (and ``detect`` takes from
the attrs it reads with the image). :func:`read_scan_table` requires only the columns its readers
use (:data:`TABLE_COLUMNS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lungseg.core.atomic import write_csv_atomic
from lungseg.core.errors import InputError
from lungseg.io.hdf5 import read_attrs

AXES = ("z", "y", "x")
SUBSETS = ("train", "val", "none")
GEOMETRY = ("step", "offset", "source_spacing", "source_origin", "source_direction")
TABLE_COLUMNS = ("patient_id", "series_uid", "subset", "path")  # what the code reads


def scan_row(path: str | Path, subset_of: dict[str, str]) -> dict:
    attrs = read_attrs(path)
    row = {
        "patient_id": attrs["patient_id"],
        "series_uid": attrs["series_uid"],
        "subset": subset_of.get(attrs["patient_id"], "none"),
        "path": str(path),
        "n_nodules": int(attrs["n_nodules"]),
        "n_ignored": int(attrs["n_ignored"]),
    }
    for name in ("step", "offset", "source_spacing", "source_origin"):
        row.update({f"{name}_{a}": float(v) for a, v in zip(AXES, attrs[name], strict=True)})
    row["source_direction"] = " ".join(f"{v:.9g}" for v in attrs["source_direction"])
    return row


def write_scan_table(*, volumes: list[str], patients: str, table: str) -> None:
    """Write the detection scan table of ``volumes``, subsets from ``patients`` (patients.csv)."""
    frame = pd.read_csv(patients, dtype={"patient_id": str})
    if not {"patient_id", "subset"} <= set(frame.columns):
        raise InputError(f"{patients}: needs columns patient_id, subset")
    repeated = frame["patient_id"][frame["patient_id"].duplicated()].tolist()
    if repeated:
        raise InputError(f"{patients}: patient(s) listed twice: {repeated[:5]}")
    subset_of = dict(zip(frame["patient_id"], frame["subset"], strict=True))
    usable = [p for p in sorted(volumes) if read_attrs(p).get("conversion") != "failed"]
    rows = [scan_row(path, subset_of) for path in usable]
    write_csv_atomic(table, pd.DataFrame(rows).sort_values(["patient_id", "series_uid"]))


def read_scan_table(path: str | Path) -> pd.DataFrame:
    """The scan table; only :data:`TABLE_COLUMNS` are required (geometry: the volumes')."""
    table = pd.read_csv(path, dtype={c: str for c in (*TABLE_COLUMNS, "source_direction")})
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise InputError(f"{path}: not a detection scan table (missing {sorted(missing)})")
    return table


def volume_geometry(path: str | Path) -> dict[str, np.ndarray]:
    """The geometry of the detection volume at ``path``, from its attrs (float arrays):
    ``step, offset`` (source voxel = offset + canvas voxel * step), ``source_spacing,
    source_origin`` (z y x) and ``source_direction`` (9 numbers, row-major)."""
    attrs = read_attrs(path)
    return {name: np.asarray(attrs[name], dtype=float) for name in GEOMETRY}
