"""lungseg.evaluation.statistics on hand-made tables with hand-computed results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.evaluation.statistics import (
    cluster_bootstrap_interval,
    mean_curves,
    overfitting,
    paired_bootstrap,
    paired_bootstrap_by_bucket,
    paired_differences,
)

DRAWS = dict(draws=400, seed=0, confidence=0.95)


def scores(rows: list[tuple[str, str, str, float]], buckets: dict[str, str] | None = None):
    """(model, nodule_id, patient_id, dice) rows as a long frame (size_bucket when given)."""
    frame = pd.DataFrame(rows, columns=["model", "nodule_id", "patient_id", "dice"])
    if buckets is not None:
        frame["size_bucket"] = frame["nodule_id"].map(buckets)
    return frame


def pair(differences: dict[str, tuple[str, float]], base: float = 0.5) -> pd.DataFrame:
    """Baseline ``a`` with Dice ``base`` on each nodule, variant ``b`` = base + difference;
    ``differences``: nodule -> (patient, difference)."""
    rows = []
    for nodule, (patient, difference) in differences.items():
        rows += [("a", nodule, patient, base), ("b", nodule, patient, base + difference)]
    return scores(rows)


def test_paired_differences_match_nodules_by_id_not_by_order():
    frame = scores(
        [
            ("a", "n1", "p1", 0.5),
            ("a", "n2", "p1", 0.7),
            ("b", "n2", "p1", 0.4),  # other order
            ("b", "n1", "p1", 0.9),
            ("c", "n1", "p1", 0.5),
            ("c", "n2", "p1", 0.8),
        ]
    )
    table = paired_differences(frame, "a")
    got = {(m, n): round(d, 6) for m, n, d in table[["model", "nodule_id", "difference"]].values}
    assert got == {("b", "n1"): 0.4, ("b", "n2"): -0.3, ("c", "n1"): 0.0, ("c", "n2"): 0.1}


@pytest.mark.parametrize(
    ("differences", "mean", "low", "high", "significant"),
    [
        # a single patient: every draw is that patient, interval = the mean difference
        ({"n1": ("p1", 0.1), "n2": ("p1", 0.3)}, 0.2, 0.2, 0.2, True),
        # all differences equal: the interval is that value, whatever is drawn
        (
            {"n1": ("p1", -0.25), "n2": ("p2", -0.25), "n3": ("p3", -0.25)},
            -0.25,
            -0.25,
            -0.25,
            True,
        ),
        # no difference at all: not significant
        ({"n1": ("p1", 0.0), "n2": ("p2", 0.0)}, 0.0, 0.0, 0.0, False),
        # each patient's differences sum to 0: every patient draw has mean 0
        (
            {"n1": ("p1", 0.2), "n2": ("p1", -0.2), "n3": ("p2", 0.4), "n4": ("p2", -0.4)},
            0.0,
            0.0,
            0.0,
            False,
        ),
    ],
)
def test_bootstrap_intervals_computable_by_hand(differences, mean, low, high, significant):
    row = paired_bootstrap(pair(differences), "a", **DRAWS).iloc[0]
    assert row["model"] == "b" and row["baseline"] == "a"
    assert row["n_nodules"] == len(differences)
    assert row["n_patients"] == len({p for p, _ in differences.values()})
    assert row[["difference_mean", "difference_low", "difference_high"]].tolist() == pytest.approx(
        [mean, low, high], abs=1e-12
    )
    assert row["significant"] == significant
    assert row["confidence"] == 0.95


def test_patients_are_resampled_with_all_their_nodules():
    """Each patient's differences cancel (p1: +0.2, -0.2; p2: +0.4, -0.4): resampling patients
    gives a mean of exactly 0 in every draw, resampling nodules does not."""
    frame = pair({"n1": ("p1", 0.2), "n2": ("p1", -0.2), "n3": ("p2", 0.4), "n4": ("p2", -0.4)})
    by_patient = paired_bootstrap(frame, "a", **DRAWS).iloc[0]
    by_nodule = paired_bootstrap(frame, "a", by="nodule_id", **DRAWS).iloc[0]
    assert by_patient["difference_low"] == pytest.approx(0.0, abs=1e-12)
    assert by_patient["difference_high"] == pytest.approx(0.0, abs=1e-12)
    assert by_nodule["difference_low"] < -0.1 and by_nodule["difference_high"] > 0.1
    assert by_nodule["n_patients"] == 4  # the resampled units


def test_two_patients_give_the_binomial_interval():
    """Two patients with one nodule each, differences 0.5 and 0: a draw's mean is 0, 0.25 or 0.5
    with probabilities 1/4, 1/2, 1/4; the 95% interval is [0, 0.5], the 40% one [0.25, 0.25]."""
    frame = pair({"n1": ("p1", 0.5), "n2": ("p2", 0.0)}, base=0.5)
    frame.loc[frame["model"] == "b", "dice"] = [1.0, 0.5]
    wide = paired_bootstrap(frame, "a", draws=4000, seed=1, confidence=0.95).iloc[0]
    narrow = paired_bootstrap(frame, "a", draws=4000, seed=1, confidence=0.4).iloc[0]
    assert (wide["difference_low"], wide["difference_high"]) == (0.0, 0.5)
    assert (narrow["difference_low"], narrow["difference_high"]) == (0.25, 0.25)
    assert wide["difference_mean"] == 0.25 and not wide["significant"]


def test_cluster_bootstrap_weights_nodules_not_patients():
    """p1 has three nodules of difference 1, p2 one of 0: draws p1p1 -> 1, p1p2 -> 3/4, p2p2 -> 0;
    the 40% interval lies in the p1p2 draws."""
    values = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = cluster_bootstrap_interval(
        values, np.array(["p1", "p1", "p1", "p2"]), draws=4000, seed=0, confidence=0.4
    )
    assert (low, high) == (0.75, 0.75)


def test_bootstrap_is_deterministic_for_a_seed_and_independent_of_other_variants():
    rng = np.random.default_rng(5)
    rows = []
    for i in range(12):
        patient = f"p{i // 3}"
        rows += [(m, f"n{i}", patient, float(rng.random())) for m in ("a", "b", "c")]
    frame = scores(rows)
    one = paired_bootstrap(frame, "a", draws=200, seed=3, confidence=0.9)
    again = paired_bootstrap(frame, "a", draws=200, seed=3, confidence=0.9)
    pd.testing.assert_frame_equal(one, again)
    alone = paired_bootstrap(frame[frame["model"] != "c"], "a", draws=200, seed=3, confidence=0.9)
    pd.testing.assert_frame_equal(one.iloc[:1], alone)
    other = paired_bootstrap(frame, "a", draws=200, seed=4, confidence=0.9)
    assert not np.allclose(one["difference_low"], other["difference_low"])


def test_bootstrap_by_size_bucket_has_all_then_each_bucket():
    buckets = {"n1": "small", "n2": "small", "n3": "large"}
    frame = pair({"n1": ("p1", 0.1), "n2": ("p2", 0.1), "n3": ("p2", -0.2)})
    frame["size_bucket"] = frame["nodule_id"].map(buckets)
    table = paired_bootstrap_by_bucket(frame, "a", buckets=["small", "large", "huge"], **DRAWS)
    assert table["size_bucket"].tolist() == ["all", "small", "large", "huge"]
    assert table["n_nodules"].tolist() == [3, 2, 1, 0]
    assert table["n_patients"].tolist() == [2, 2, 1, 0]
    means = table["difference_mean"].tolist()
    assert means[:3] == pytest.approx([0.0, 0.1, -0.2], abs=1e-12)
    assert np.isnan(means[3]) and not table["significant"].iloc[3]
    small = table.iloc[1]
    assert (small["difference_low"], small["difference_high"]) == pytest.approx((0.1, 0.1))
    assert small["significant"]


@pytest.mark.parametrize(
    ("frame", "baseline", "message"),
    [
        (pair({"n1": ("p1", 0.1)}), "unet", "baseline 'unet' is not among the models"),
        (
            scores([("a", "n1", "p1", 0.5), ("a", "n2", "p1", 0.5), ("b", "n1", "p1", 0.5)]),
            "a",
            "nodule n2 is scored by model a only",
        ),
        (
            scores([("a", "n1", "p1", 0.5), ("b", "n1", "p1", 0.5), ("b", "n3", "p1", 0.5)]),
            "a",
            "nodule n3 is scored by model b only",
        ),
        (
            scores([("a", "n1", "p1", 0.5), ("a", "n1", "p1", 0.6), ("b", "n1", "p1", 0.5)]),
            "a",
            "nodule n1 appears more than once for model a",
        ),
    ],
)
def test_bootstrap_errors_name_the_baseline_or_nodule(frame, baseline, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(frame, baseline, **DRAWS)


def curve(val: list[float], train: list[float], **keys) -> pd.DataFrame:
    epochs = range(1, len(val) + 1)
    return pd.DataFrame({**keys, "epoch": epochs, "train_dice": train, "val_dice": val})


@pytest.mark.parametrize(
    ("val", "train", "expected"),
    [
        # peak at epoch 3, falls to 0.5: drop 0.2; gap at the last epoch 0.9 - 0.5
        ([0.1, 0.4, 0.7, 0.6, 0.5], [0.2, 0.5, 0.7, 0.8, 0.9], (3, 0.7, 5, 0.5, 0.2, 0.4)),
        # ties: the first epoch reaching the maximum
        ([0.3, 0.6, 0.6, 0.6], [0.3, 0.6, 0.7, 0.8], (2, 0.6, 4, 0.6, 0.0, 0.2)),
        # still rising at the end: no drop; validation above training: negative gap
        ([0.1, 0.2, 0.3], [0.1, 0.15, 0.2], (3, 0.3, 3, 0.3, 0.0, -0.1)),
        # a single epoch
        ([0.4], [0.5], (1, 0.4, 1, 0.4, 0.0, 0.1)),
    ],
)
def test_overfitting_of_hand_written_curves(val, train, expected):
    row = overfitting(curve(val, train)).iloc[0]
    names = ["peak_epoch", "peak_val_dice", "last_epoch", "last_val_dice", "drop", "train_val_gap"]
    assert row[names].tolist() == pytest.approx(list(expected))
    assert row["n_epochs"] == len(val)


def test_overfitting_has_one_row_per_model_and_fold_whatever_the_row_order():
    frame = pd.concat(
        [
            curve([0.2, 0.5, 0.3], [0.2, 0.5, 0.6], model="m", fold=1),
            curve([0.4, 0.1], [0.4, 0.5], model="m", fold=0),
        ]
    ).sample(frac=1.0, random_state=0)
    table = overfitting(frame).set_index(["model", "fold"])
    assert table.loc[("m", 1), ["peak_epoch", "drop"]].tolist() == pytest.approx([2, 0.2])
    assert table.loc[("m", 0), ["peak_epoch", "drop", "last_epoch"]].tolist() == pytest.approx(
        [1, 0.3, 2]
    )


def test_mean_curves_with_band_over_two_folds():
    frame = pd.concat(
        [
            curve([0.2, 0.4, 0.6], [0.3, 0.5, 0.7], model="m", fold=0),
            curve([0.4, 0.8], [0.5, 0.9], model="m", fold=1),  # one epoch fewer
            curve([0.1], [0.1], model="k", fold=0),
        ]
    )
    table = mean_curves(frame)
    assert table[["model", "epoch"]].values.tolist() == [["m", 1], ["m", 2], ["m", 3], ["k", 1]]
    m = table[table["model"] == "m"]
    assert m["n_folds"].tolist() == [2, 2, 1]
    assert m["val_dice_mean"].tolist() == pytest.approx([0.3, 0.6, 0.6])
    assert m["val_dice_min"].tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert m["val_dice_max"].tolist() == pytest.approx([0.4, 0.8, 0.6])
    assert m["train_dice_mean"].tolist() == pytest.approx([0.4, 0.7, 0.7])
    # sample standard deviation of two values a, b: |a - b| / sqrt(2); one fold: NaN
    assert m["val_dice_std"].iloc[:2].tolist() == pytest.approx([0.2 / 2**0.5, 0.4 / 2**0.5])
    assert np.isnan(m["val_dice_std"].iloc[2])
    assert m["train_dice_std"].iloc[0] == pytest.approx(0.2 / 2**0.5)
