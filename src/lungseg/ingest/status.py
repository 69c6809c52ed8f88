"""Series status codes of the index and the slice-spacing check that sets them."""

from __future__ import annotations

import numpy as np

STATUS_OK = "ok"  # converted, used for training
STATUS_EXCLUDED = "excluded"  # converted, not used for training (reason says why)
STATUS_SKIPPED = "skipped"  # not converted (reason says why)


def spacing_problem(z_positions: list[float], tolerance: float) -> str | None:
    """Why sorted, distinct slice positions are not evenly spaced, or None when they are.

    A gap that deviates from the median spacing by more than ``tolerance`` (a fraction) is a
    problem: near a whole multiple of the spacing it counts as missing slices, else irregular.
    """
    gaps = np.diff(np.asarray(z_positions, dtype=float))
    if gaps.size == 0:
        return None
    step = float(np.median(gaps))
    if step <= 0:
        return f"slice positions not increasing (median spacing {step:g} mm)"
    ratio = gaps / step
    if not np.any(np.abs(ratio - 1) > tolerance):
        return None
    long_gaps = ratio[ratio > 1 + tolerance]
    near_whole = np.abs(long_gaps - np.rint(long_gaps)) <= tolerance
    if (
        long_gaps.size
        and np.all(near_whole)
        and np.all(np.abs(ratio[ratio <= 1 + tolerance] - 1) <= tolerance)
    ):
        missing = int(np.sum(np.rint(long_gaps) - 1))
        return f"missing slices: about {missing} absent (spacing {step:g} mm)"
    return f"irregular slice spacing: {gaps.min():g}..{gaps.max():g} mm, median {step:g}"
