"""LUNA16 FROC and CPM on hand-computed cases (lungseg.evaluation.froc).

Every case lists candidates and reference findings of a few scans on one axis (x, mm; y = z = 0)
and the FROC points worked out by hand from the rules of noduleCADEvaluationLUNA16.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungseg.evaluation.froc import (
    OPERATING_POINTS,
    bootstrap,
    ci_bounds,
    compute_froc,
    froc_entries,
    froc_of,
    limit_candidates,
)


def candidates(*rows) -> pd.DataFrame:
    """rows: (scan, x_mm, probability)."""
    return pd.DataFrame(
        [(s, x, 0.0, 0.0, p) for s, x, p in rows],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "probability"],
    )


def reference(*rows) -> pd.DataFrame:
    """rows: (scan, x_mm, diameter_mm, relevant)."""
    return pd.DataFrame(
        [(s, x, 0.0, 0.0, d, r) for s, x, d, r in rows],
        columns=["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "relevant"],
    )


# (name, candidates, reference, scans, expected (fps, sensitivity, threshold) points)
CASES = [
    (
        "distance equal to the radius misses",
        # nodule at 0, diameter 10: a candidate at exactly 5 mm is a false positive; 4.999 hits
        candidates(("a", 5.0, 0.9), ("a", 4.999, 0.4)),
        reference(("a", 0.0, 10.0, True)),
        ["a"],
        [(0, 0, np.inf), (1, 0, 0.9), (1, 1, 0.4)],
    ),
    (
        "one candidate hits two nodules",
        # nodules at 0 and 6 (diameter 10 each): the candidate at 3 hits both
        candidates(("a", 3.0, 0.8), ("a", 50.0, 0.5)),
        reference(("a", 0.0, 10.0, True), ("a", 6.0, 10.0, True)),
        ["a"],
        [(0, 0, np.inf), (0, 1, 0.8), (1, 1, 0.5)],
    ),
    (
        "a nodule scores its best hit, other hits leave the FP pool",
        candidates(("a", 1.0, 0.3), ("a", -1.0, 0.7), ("a", 40.0, 0.5)),
        reference(("a", 0.0, 6.0, True)),
        ["a"],
        [(0, 0, np.inf), (0, 1, 0.7), (1, 1, 0.5)],
    ),
    (
        "a candidate on an irrelevant finding is ignored; a missed nodule counts below",
        candidates(("a", 100.0, 0.9), ("a", 30.0, 0.6)),
        reference(("a", 0.0, 10.0, True), ("a", 100.0, 8.0, False)),
        ["a"],
        [(0, 0, np.inf), (1, 0, 0.6)],
    ),
    (
        "a scan without candidates: its nodule is missed, it counts as a scan",
        candidates(("a", 0.0, 0.9), ("a", 20.0, 0.2)),
        reference(("a", 0.0, 10.0, True), ("b", 0.0, 10.0, True)),
        ["a", "b"],
        [(0, 0, np.inf), (0, 0.5, 0.9), (0.5, 0.5, 0.2)],
    ),
    (
        "a scan without nodules: all its candidates are false positives",
        candidates(("a", 0.0, 0.9), ("b", 0.0, 0.95), ("b", 9.0, 0.1)),
        reference(("a", 0.0, 10.0, True)),
        ["a", "b"],
        [(0, 0, np.inf), (0.5, 0, 0.95), (0.5, 1, 0.9), (1, 1, 0.1)],
    ),
    (
        "ties share one FROC point",
        candidates(("a", 0.0, 0.5), ("a", 30.0, 0.5), ("a", 60.0, 0.5)),
        reference(("a", 0.0, 10.0, True)),
        ["a"],
        [(0, 0, np.inf), (2, 1, 0.5)],
    ),
    (
        "more than 100 candidates with tied scores: ties at the 101st drop out together",
        # 1 candidate at 0.9 on the nodule, 120 false positives tied at 0.5: the 101st highest
        # is 0.5, only candidates strictly above it stay, i.e. the hit alone
        candidates(("a", 0.0, 0.9), *[("a", 20.0 + i, 0.5) for i in range(120)]),
        reference(("a", 0.0, 10.0, True)),
        ["a"],
        [(0, 0, np.inf), (0, 1, 0.9)],
    ),
    (
        "a finding without a diameter gets 10 mm",
        candidates(("a", 4.5, 0.9)),
        reference(("a", 0.0, -1.0, True)),
        ["a"],
        [(0, 0, np.inf), (0, 1, 0.9)],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_froc_points(case):
    _, cands, ref, scans, expected = case
    froc = froc_of(froc_entries(cands, ref, scans), len(scans))
    got = list(zip(froc.fps_per_scan, froc.sensitivity, froc.threshold, strict=True))
    assert len(got) == len(expected), got
    for (f, s, t), (ef, es, et) in zip(got, expected, strict=True):
        assert f == pytest.approx(ef) and s == pytest.approx(es) and t == et, got


def test_limit_candidates_keeps_100_highest_in_order():
    probs = np.linspace(1, 0, 150)
    assert limit_candidates(probs).sum() == 100
    assert limit_candidates(probs)[:100].all()
    tied = np.r_[0.9, 0.8, np.full(200, 0.5)]
    assert limit_candidates(tied).tolist() == [True, True] + [False] * 200
    assert limit_candidates(np.full(100, 0.5)).all()  # exactly 100: all stay


def test_cpm_interpolates_the_froc_at_the_seven_points():
    # FROC (0,0) -> (0, 0.5) -> (1, 0.5) -> (3, 1.0): sensitivity 0.5 up to 1 FP, then linear
    froc = compute_froc(
        [1, 0, 1, 0, 0, 1],
        [0.9, 0.8, 0.7, 0.6, 0.5, -1e9],
        [False, False, False, False, False, True],
        2,
    )
    # points: (0,0,inf) (0,1/3,.9) (.5,1/3,.8) (.5,2/3,.7) (1,2/3,.6) (1.5,2/3,.5)
    assert froc.fps_per_scan.tolist() == [0, 0, 0.5, 0.5, 1.0, 1.5]
    assert froc.sensitivity.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    # 1/8 and 1/4 lie on the flat part at 1/3; 1/2 is a vertical step: np.interp takes its top
    expected = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    assert froc.sensitivity_at(OPERATING_POINTS) == pytest.approx(expected)
    assert froc.cpm() == pytest.approx(np.mean(expected))
    assert froc.threshold_at(1.0) == 0.6
    assert froc.threshold_at(0.4) == 0.9


def test_interpolation_between_points():
    froc = compute_froc([0, 1, 0, 0, 0, 1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [False] * 6, 1)
    # (0,0) (1,0) (1,.5) (2,.5) (3,.5) (4,.5) (4,1): at 0.5 FP -> 0, at 8 -> 1 (beyond: last)
    assert froc.sensitivity_at([0.5, 1.0, 2.0, 4.0, 8.0]) == pytest.approx([0, 0.5, 0.5, 1, 1])


def test_no_hit_gives_zero_and_no_nodule_gives_nan():
    froc = froc_of(
        froc_entries(candidates(("a", 50.0, 0.9)), reference(("a", 0.0, 10.0, True)), ["a"]), 1
    )
    assert froc.cpm() == 0.0
    empty = froc_of(froc_entries(candidates(("a", 50.0, 0.9)), reference(), ["a"]), 1)
    assert np.isnan(empty.cpm())


def test_bootstrap_is_seeded_and_brackets_the_cpm():
    cands = candidates(
        ("a", 0.0, 0.9), ("a", 40.0, 0.3), ("b", 0.0, 0.2), ("b", 40.0, 0.8), ("c", 40.0, 0.6)
    )
    ref = reference(("a", 0.0, 10.0, True), ("b", 0.0, 10.0, True), ("c", 0.0, 10.0, True))
    scans = ["a", "b", "c", "d"]
    entries = froc_entries(cands, ref, scans)
    one = bootstrap(entries, scans, draws=200, seed=3)
    two = bootstrap(entries, scans, draws=200, seed=3)
    other = bootstrap(entries, scans, draws=200, seed=4)
    assert np.array_equal(one.cpm, two.cpm, equal_nan=True)
    assert not np.array_equal(one.cpm, other.cpm, equal_nan=True)
    low, high = one.cpm_interval()
    cpm = froc_of(entries, len(scans)).cpm()
    assert 0 <= low <= cpm <= high <= 1
    assert (one.sensitivity_low <= one.sensitivity_high + 1e-12).all()


def test_ci_bounds_follow_luna16_indices():
    values = np.arange(1000) / 1000  # sorted: index floor(0.025 * 1000) = 25, floor(975) = 975
    assert ci_bounds(values) == (0.025, 0.975)
    assert ci_bounds(np.r_[values, np.nan]) == (0.025, 0.975)  # draws without nodules skipped
