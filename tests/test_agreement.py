"""ICC(3,1) against hand-computed and published values; feature and class agreement tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungseg.evaluation.agreement import class_agreement, feature_agreement, icc_3_1

#: Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; ICC(3,1) = 0.71 (Table 4)
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
)
# their mean squares: BMS 11.24, EMS 1.02 -> (11.24 - 1.02) / (11.24 + 3 * 1.02)
SHROUT_FLEISS_ICC = (11.2417 - 1.0194) / (11.2417 + 3 * 1.0194)

CASES = [
    pytest.param(SHROUT_FLEISS, SHROUT_FLEISS_ICC, id="shrout-fleiss-6x4"),
    # MSR 6.25, MSE 0.25 (grand mean 2.75, SSR 6.25, SSC 2.25, SST 8.75): 6 / 6.5
    pytest.param([[1, 2], [3, 5]], 12 / 13, id="2x2-by-hand"),
    # rows agree on nothing: MSR 0, MSE 1 -> -1
    pytest.param([[1, 2], [2, 1]], -1.0, id="reversed"),
    pytest.param([[1, 1], [2, 2], [4, 4]], 1.0, id="perfect"),
    pytest.param([[1, 11], [2, 12], [4, 14], [8, 18]], 1.0, id="constant-offset"),
    pytest.param([[1, 2, 3]], math.nan, id="one-subject"),
    pytest.param([[1], [2], [3]], math.nan, id="one-rater"),
    pytest.param([[5, 5], [5, 5], [5, 5]], math.nan, id="no-variance"),
    pytest.param([[1, 2], [3, math.nan], [4, 5]], math.nan, id="nan-rating"),
]


@pytest.mark.parametrize(("ratings", "expected"), CASES)
def test_icc_3_1(ratings, expected):
    got = icc_3_1(np.asarray(ratings, dtype=float))
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-3)


def test_shrout_fleiss_rounds_to_the_published_value():
    assert round(icc_3_1(SHROUT_FLEISS), 2) == 0.71


def test_feature_agreement_pairs_on_the_key_and_drops_nan_pairs():
    predicted = pd.DataFrame(
        {
            "nodule_id": ["b", "a", "c", "x"],  # x: no reference
            "original_shape_MeshVolume": [3.0, 1.0, 9.0, 100.0],
            "original_glcm_Contrast": [2.0, 1.0, math.nan, 0.0],
            "original_firstorder_Mean": [5.0, 5.0, 5.0, 5.0],
            "original_shape_Note": ["n", "n", "n", "n"],  # not numeric
            "original_ngtdm_Busyness": [1.0, 2.0, 3.0, 4.0],  # not in the reference
        }
    )
    reference = pd.DataFrame(
        {
            "nodule_id": ["a", "b", "c"],
            "original_shape_MeshVolume": [2.0, 5.0, 9.0],
            "original_glcm_Contrast": [11.0, 12.0, 13.0],
            "original_firstorder_Mean": [5.0, 5.0, 5.0],
            "original_shape_Note": ["n", "n", "n"],
        }
    )
    table = feature_agreement(predicted, reference)
    assert list(table.columns) == ["feature", "feature_class", "n", "icc"]
    rows = table.set_index("feature")
    assert list(rows.index) == [
        "original_shape_MeshVolume", "original_glcm_Contrast", "original_firstorder_Mean",
    ]  # fmt: skip
    assert rows.loc["original_shape_MeshVolume", "feature_class"] == "shape"
    assert rows.loc["original_shape_MeshVolume", "n"] == 3
    # pairs (1, 2), (3, 5), (9, 9) by hand: grand mean 29/6, SSR 350/6, SSC 1.5, SST 365/6,
    # SSE 1; MSR 175/6, MSE 0.5 -> (175/6 - 1/2) / (175/6 + 1/2) = 172/178
    assert rows.loc["original_shape_MeshVolume", "icc"] == pytest.approx(172 / 178)
    assert rows.loc["original_glcm_Contrast", "n"] == 2  # c's NaN pair dropped
    assert rows.loc["original_glcm_Contrast", "icc"] == pytest.approx(1.0)  # offset of 10
    assert math.isnan(rows.loc["original_firstorder_Mean", "icc"])  # no variance


def test_feature_agreement_refuses_duplicate_keys():
    frame = pd.DataFrame({"nodule_id": ["a", "a"], "original_shape_MeshVolume": [1.0, 2.0]})
    with pytest.raises(ValueError, match="more than once"):
        feature_agreement(frame, frame)


def test_class_agreement_counts_features_at_or_above_the_threshold():
    table = pd.DataFrame(
        {
            "feature": ["original_shape_A", "original_shape_B", "original_glcm_C", "x"],
            "feature_class": ["shape", "shape", "glcm", "glcm"],
            "n": [3, 3, 3, 3],
            "icc": [0.95, 0.9, 0.5, math.nan],
        }
    )
    summary = class_agreement(table, threshold=0.9).set_index("feature_class")
    assert list(summary.index) == ["shape", "glcm", "all"]
    assert summary.loc["shape"].tolist() == [2, 2, 1.0]
    assert summary.loc["glcm"].tolist() == [2, 0, 0.0]
    assert summary.loc["all"].tolist() == [4, 2, 0.5]
    empty = class_agreement(table.iloc[:0])
    assert empty["feature_class"].tolist() == ["all"] and math.isnan(empty["share"].iloc[0])
