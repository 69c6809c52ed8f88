"""Step 2 of predict: a candidate whose crop covers no scan voxel is dropped, not a crash (a
scan smaller than the detector's canvas gives detections on the canvas' padding)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scan_helpers import tiny_bundles

from lungseg.dataset.crops import crop_geometry
from lungseg.predict.bundle import SEGMENTER, bundle_model, read_bundle
from lungseg.predict.segment import paste_region, segment_candidates


@pytest.mark.parametrize(
    ("centre", "empty"),
    [
        ((10.0, 10.0, 10.0), False),  # inside
        ((-3.0, 10.0, 10.0), False),  # beyond the first slice, the crop still reaches in
        ((-40.0, 10.0, 10.0), True),  # far beyond: nothing of the scan in the crop
        ((10.0, 10.0, 70.0), True),
    ],
)
def test_paste_region_of_a_crop_beyond_the_scan(centre, empty):
    geometry = crop_geometry(centre, [16, 16, 16], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    lo, hi = paste_region(geometry, (20, 20, 20))
    assert any(a >= b for a, b in zip(lo, hi, strict=True)) == empty


def test_candidates_outside_the_scan_are_dropped(tmp_path, caplog):
    _, path = tiny_bundles(tmp_path)
    bundle = read_bundle(path, SEGMENTER)
    model = bundle_model(bundle, "cpu")
    image = np.full((20, 20, 20), -800, np.int16)
    candidates = pd.DataFrame(
        {"center_z": [10.0, -40.0], "center_y": [10.0, 10.0], "center_x": [10.0, 10.0]}
    )
    with caplog.at_level("INFO"):
        pieces = segment_candidates(image, (1.0, 1.0, 1.0), candidates, model, bundle)
    assert [piece.centre for piece in pieces] == [(10.0, 10.0, 10.0)]
    assert "lies outside the scan: dropped" in caplog.text
