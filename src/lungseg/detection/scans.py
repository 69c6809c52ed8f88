"""The detection scan table: every detection volume, its subset of the patient split, geometry.

``results/detection_volumes/scans.csv`` (rule ``detection_scans``): one row per detection volume,
``patient_id, series_uid, subset`` (``train``/``val`` from results/split/patients.csv, which
places every scanned patient, with cohort nodules or without; ``none`` for a patient it does not
list), ``path``,
``n_nodules, n_ignored`` (cohort nodules and irrelevant findings in the target), the canvas
geometry ``step_z/y/x, offset_z/y/x`` (source voxel = offset + canvas voxel * step) and the source
geometry ``source_spacing_z/y/x, source_origin_z/y/x, source_direction`` (9 numbers, row-major, as
in the volume's attrs) that turns source voxels into patient millimetres.
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
    table = pd.read_csv(path, dtype={"source_direction": str})
    missing = {"series_uid", "subset", "path", "offset_z", "source_direction"} - set(table.columns)
    if missing:
        raise InputError(f"{path}: not a detection scan table (missing {sorted(missing)})")
    return table


def geometry(row) -> dict:
    """The geometry of a scan table row in the form of the detection volume's attrs."""
    return {
        "step": np.array([row[f"step_{a}"] for a in AXES], dtype=float),
        "offset": np.array([row[f"offset_{a}"] for a in AXES], dtype=float),
        "source_spacing": np.array([row[f"source_spacing_{a}"] for a in AXES], dtype=float),
        "source_origin": np.array([row[f"source_origin_{a}"] for a in AXES], dtype=float),
        "source_direction": np.array(str(row["source_direction"]).split(), dtype=float),
    }
