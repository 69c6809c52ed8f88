"""Patient-level split: no patient on both sides, seeded, size-stratified, k folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.cli import main
from lungseg.dataset.settings import SplitSettings
from lungseg.dataset.split import (
    REQUIRED_COLUMNS,
    assign_groups,
    place_in_order,
    scanned_patients,
    size_strata,
    split_nodules,
    split_patients,
    training_nodules,
    write_split,
)


def settings(**keys) -> SplitSettings:
    """The schema's split defaults with ``keys`` changed."""
    return SplitSettings.from_config(keys)


def nodule_table(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    """An LIDC-like nodules.csv: 1-6 nodules a patient, diameters 3-40 mm (log-normal)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        patient = f"LIDC-IDRI-{p + 1:04d}"
        series = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{100000 + p}"
        for label in range(1, int(rng.integers(1, 7)) + 1):
            rows.append(
                {
                    "nodule_id": f"{patient}_{series[-8:]}_{label:02d}",
                    "patient_id": patient,
                    "series_uid": series,
                    "label": label,
                    "n_readers": int(rng.integers(1, 5)),
                    **{f"centroid_{a}": 10.0 for a in "zyx"},
                    **{f"bbox_{a}{e}": 5 + 10 * e for a in "zyx" for e in (0, 1)},
                    "diameter_mm": float(np.clip(rng.lognormal(np.log(8), 0.6), 3, 40)),
                    "series_status": "ok",
                    "in_cohort": True,
                }
            )
    return pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS))


def patients_per_subset(split: pd.DataFrame, column: str = "subset") -> pd.Series:
    return split.groupby("patient_id")[column].nunique()


@pytest.mark.parametrize(
    ("val_fraction", "seed", "folds"),
    [(0.2, 0, 0), (0.2, 1, 0), (0.3, 5, 0), (0.5, 2, 0), (0.2, 0, 5), (0.2, 3, 3)],
)
def test_no_patient_on_both_sides(val_fraction, seed, folds):
    split = split_nodules(
        nodule_table(), settings(val_fraction=val_fraction, seed=seed, folds=folds)
    )
    assert (patients_per_subset(split) == 1).all()
    if folds:
        assert (patients_per_subset(split, "fold") == 1).all()
        assert set(split["fold"]) == set(range(folds))
    assert set(split["subset"]) == {"train", "val"}


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_same_seed_same_split_other_seed_other_split(seed):
    table = nodule_table()
    first = split_nodules(table, settings(seed=seed))
    again = split_nodules(table.sample(frac=1.0, random_state=9), settings(seed=seed))  # row order
    pd.testing.assert_frame_equal(
        first.set_index("nodule_id").sort_index(), again.set_index("nodule_id").sort_index()
    )
    other = split_nodules(table, settings(seed=seed + 1))
    assert not first["subset"].equals(other["subset"])


@pytest.mark.parametrize(("val_fraction", "seed"), [(0.2, 0), (0.2, 7), (0.25, 3)])
def test_fractions_and_size_strata_are_balanced(val_fraction, seed):
    split = split_nodules(nodule_table(), settings(val_fraction=val_fraction, seed=seed))
    share = (split["subset"] == "val").mean()
    assert abs(share - val_fraction) < 0.03
    per_stratum = pd.crosstab(split["size_stratum"], split["subset"])
    assert (per_stratum > 0).all().all(), per_stratum  # small and large nodules on both sides
    stratum_share = per_stratum["val"] / per_stratum.sum(axis=1)
    assert (abs(stratum_share - val_fraction) < 0.12).all(), stratum_share


def test_k_folds_are_equal_and_val_is_the_chosen_fold():
    split = split_nodules(nodule_table(), settings(folds=5, val_fold=2, seed=0))
    sizes = split["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 3, sizes
    assert (split["subset"] == "val").equals(split["fold"] == 2)


@pytest.mark.parametrize(
    ("diameters", "bins", "expected"),
    [
        (
            [3.0, 5.99, 6.0, 9.9, 10.0, 25.0],
            (6, 10, 20),
            ["<6", "<6", "6-10", "6-10", "10-20", ">=20"],
        ),
        ([3.0, 30.0], (), ["all", "all"]),
    ],
)
def test_size_strata(diameters, bins, expected):
    assert size_strata(pd.Series(diameters), bins).tolist() == expected


def test_every_bucket_gets_a_patient_even_with_few_patients():
    counts = np.array([[5], [1]])  # the small patient must go to val
    buckets = assign_groups(counts, [0.8, 0.2], np.random.default_rng(0))
    assert sorted(buckets.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="1 patient"):
        assign_groups(np.array([[3]]), [0.8, 0.2], np.random.default_rng(0))


def test_only_ok_cohort_nodules_are_split_and_cli_writes_the_table(tmp_path):
    table = nodule_table(20)
    table.loc[0, "series_status"] = "excluded"
    table.loc[1, "in_cohort"] = False
    nodules_csv = tmp_path / "nodules.csv"
    table.to_csv(nodules_csv, index=False)
    conversion_csv = tmp_path / "conversion.csv"
    conversion_table(sorted(set(table["patient_id"])) + ["LIDC-IDRI-0900"]).to_csv(
        conversion_csv, index=False
    )
    out, patients = tmp_path / "split" / "split.csv", tmp_path / "split" / "patients.csv"
    argv = ["split", "--nodules", str(nodules_csv), "--conversion", str(conversion_csv)]
    assert main([*argv, "--split", str(out), "--patients", str(patients), "--seed", "3"]) == 0
    written = pd.read_csv(out)
    assert list(written.columns[:3]) == ["nodule_id", "patient_id", "subset"]
    assert set(written["nodule_id"]) == set(table["nodule_id"][2:])
    expected = write_split(nodules_csv, tmp_path / "again.csv", settings(seed=3))
    assert written["subset"].tolist() == expected["subset"].tolist()
    placed = pd.read_csv(patients).set_index("patient_id")
    assert list(placed.columns) == ["subset", "n_nodules"]
    assert placed.at["LIDC-IDRI-0900", "n_nodules"] == 0
    assert set(placed.index) == set(table["patient_id"]) | {"LIDC-IDRI-0900"}


def conversion_table(patients, index_status="ok", conversion="converted") -> pd.DataFrame:
    """A conversion.csv of one series per patient."""
    return pd.DataFrame(
        {
            "patient_id": list(patients),
            "series_uid": [f"1.2.3.{k}" for k in range(len(patients))],
            "index_status": index_status,
            "conversion": conversion,
            "reason": "",
        }
    )


@pytest.mark.parametrize(
    ("n_items", "fractions", "buckets"),
    [
        (0, [0.8, 0.2], []),
        (1, [0.8, 0.2], [0]),
        (5, [0.8, 0.2], [0, 0, 1, 0, 0]),  # 0.8*3 - 2 = 0.4 < 0.2*3 = 0.6: the third goes to val
        (10, [0.8, 0.2], [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]),
        (4, [0.5, 0.5], [0, 1, 0, 1]),  # ties go to the lower bucket
        (7, [1 / 3] * 3, [0, 1, 2, 0, 1, 2, 0]),
    ],
)
def test_place_in_order_fills_each_bucket_to_its_share(n_items, fractions, buckets):
    assert place_in_order(n_items, fractions).tolist() == buckets


@pytest.mark.parametrize("folds", [0, 5])
def test_patients_without_nodules_are_placed_and_the_nodule_split_does_not_move(folds):
    split = split_nodules(nodule_table(30), settings(folds=folds, val_fold=1))
    others = [f"LIDC-IDRI-{900 + k}" for k in range(50)]
    placed = split_patients(
        split, [*split["patient_id"], *others], settings(folds=folds, val_fold=1)
    )
    assert placed["patient_id"].is_unique
    by_patient = placed.set_index("patient_id")
    nodule_subsets = split.groupby("patient_id")["subset"].first()
    assert by_patient.loc[nodule_subsets.index, "subset"].tolist() == nodule_subsets.tolist()
    assert (by_patient.loc[nodule_subsets.index, "n_nodules"] > 0).all()
    empty = by_patient.loc[others]
    assert (empty["n_nodules"] == 0).all()
    assert (empty["subset"] == "val").sum() == 10  # 20 % of 50, as the nodule split's val share
    if folds:
        assert empty["fold"].value_counts().tolist() == [10] * 5
        assert ((empty["fold"] == 1) == (empty["subset"] == "val")).all()
    again = split_patients(
        split, [*others, *split["patient_id"]], settings(folds=folds, val_fold=1)
    )
    pd.testing.assert_frame_equal(placed, again)  # seeded, independent of the input order
    other_seed = split_patients(split, others, settings(folds=folds, val_fold=1, seed=7))
    assert (
        other_seed.set_index("patient_id").loc[others, "subset"].tolist()
        != empty["subset"].tolist()
    )


@pytest.mark.parametrize(
    ("index_status", "conversion", "scanned"),
    [("ok", "converted", True), ("excluded", "converted", False), ("ok", "failed", False),
     ("skipped", "skipped", False)],
)  # fmt: skip
def test_scanned_patients_are_the_converted_ok_series(tmp_path, index_status, conversion, scanned):
    table = pd.concat(
        [
            conversion_table(["LIDC-IDRI-0001"]),
            conversion_table(["LIDC-IDRI-0002"], index_status, conversion),
        ]
    )
    table.to_csv(tmp_path / "conversion.csv", index=False)
    expected = ["LIDC-IDRI-0001", *(["LIDC-IDRI-0002"] if scanned else [])]
    assert scanned_patients(tmp_path / "conversion.csv") == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns="diameter_mm"), "missing column"),
        (lambda t: t.assign(series_status="excluded"), "no nodule has series_status"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "repeated nodule_id"),
        (lambda t: t.assign(in_cohort="maybe"), "in_cohort must be true/false"),
    ],
)
def test_bad_nodule_table_names_the_file(tmp_path, change, message):
    path = tmp_path / "nodules.csv"
    change(nodule_table(5)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message) as error:
        training_nodules(path)
    assert str(path) in str(error.value)
