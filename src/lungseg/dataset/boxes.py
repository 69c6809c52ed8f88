"""Boxes cut from arrays that may reach beyond them (crops near a scan's border)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def overlap(shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]):
    """(slices into the array, slices into the box) of box ``[lo, hi)``; None if disjoint."""
    inside = [(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, shape, strict=True)]
    if any(a >= b for a, b in inside):
        return None
    return (
        tuple(slice(a, b) for a, b in inside),
        tuple(slice(a - low, b - low) for (a, b), low in zip(inside, lo, strict=True)),
    )


def padded_box(array: np.ndarray, lo: Sequence[int], hi: Sequence[int], fill) -> np.ndarray:
    """``array[lo:hi]`` per axis, ``fill`` where the box leaves the array."""
    box = np.full(tuple(h - low for low, h in zip(lo, hi, strict=True)), fill, array.dtype)
    if (parts := overlap(array.shape, lo, hi)) is not None:
        box[parts[1]] = array[parts[0]]
    return box


__all__ = ["overlap", "padded_box"]
