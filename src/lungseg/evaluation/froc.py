"""FROC and CPM exactly as LUNA16's evaluation script (``noduleCADEvaluationLUNA16.py``).

The rules, in the script's order (Setio et al., Medical Image Analysis 2017):

- **At most 100 candidates a scan**: with more, the probability of the 101st highest is a
  threshold and only candidates strictly above it stay (at most 100, in table order), so ties at
  the limit drop out together, possibly leaving fewer than 100.
- **Hit**: a candidate strictly closer than ``diameter / 2`` (mm) to a reference nodule's centre
  (a distance equal to the radius misses). A finding without a diameter (<= 0) gets 10 mm.
- Every candidate that hits a reference nodule leaves the false-positive pool; the nodule scores
  its **best** hit. One candidate may hit two nodules and then counts for both.
- Candidates hitting an **irrelevant finding** (annotated, but not in the reference) and no
  reference nodule are ignored: neither hit nor false positive.
- A **missed** nodule counts only in the denominator of the sensitivity.
- The FROC is the ROC of the remaining entries (hits and false positives) read as
  ``false positives / scans`` against ``hits / reference nodules``; it starts at (0, 0) with
  threshold ``inf`` and has one point per distinct probability (sklearn's ``roc_curve`` without
  dropping collinear points: the same curve, the same interpolated values).
- **CPM**: the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan,
  linearly interpolated on the FROC (``numpy.interp``, as the script; at an FP rate reached by a
  vertical step it takes the step's top).
- **95 % interval**: scans drawn with replacement (1000 draws, seeded ``numpy`` generator), the
  FROC and CPM of each draw; the bounds are the sorted draws at ``floor(0.025 n)`` and
  ``floor(0.975 n)`` (the script's ``computeMeanCI``).

Two corner cases the script leaves undefined are fixed here: no reference nodule at all gives
``nan`` sensitivities; no hit at all gives sensitivity 0 everywhere (sklearn would return nan).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: The false-positive rates (per scan) whose mean sensitivity is the CPM.
OPERATING_POINTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: LUNA16's limit of candidates a scan.
MAX_CANDIDATES = 100
#: LUNA16's diameter of a finding without one (mm).
DEFAULT_DIAMETER_MM = 10.0

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
REFERENCE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "relevant")


def limit_candidates(probabilities: Sequence[float], max_candidates: int = MAX_CANDIDATES):
    """Boolean mask of the candidates of one scan that LUNA16 keeps (see the module docstring)."""
    probs = np.asarray(probabilities, dtype=float)
    keep = np.ones(len(probs), dtype=bool)
    if max_candidates <= 0 or len(probs) <= max_candidates:
        return keep
    threshold = np.sort(probs)[::-1][max_candidates]
    keep = probs > threshold
    kept = np.flatnonzero(keep)
    keep[kept[max_candidates:]] = False
    return keep


def match_scan(
    candidates_mm: np.ndarray,
    probabilities: np.ndarray,
    nodules_mm: np.ndarray,
    diameters_mm: np.ndarray,
    relevant: np.ndarray,
) -> tuple[list[float], list[float], list[bool], int]:
    """One scan's FROC entries: (is_nodule, probability, excluded) lists and its ignored count.

    ``candidates_mm`` (N, 3) and ``nodules_mm`` (M, 3) are points in one frame (mm);
    ``relevant`` marks the reference nodules, the others are irrelevant findings.
    """
    candidates_mm = np.asarray(candidates_mm, dtype=float).reshape(-1, 3)
    nodules_mm = np.asarray(nodules_mm, dtype=float).reshape(-1, 3)
    probabilities = np.asarray(probabilities, dtype=float)
    diameters = np.where(np.asarray(diameters_mm, dtype=float) > 0, diameters_mm, np.nan)
    diameters = np.nan_to_num(diameters, nan=DEFAULT_DIAMETER_MM)
    relevant = np.asarray(relevant, dtype=bool)
    labels: list[float] = []
    probs: list[float] = []
    excluded: list[bool] = []
    in_pool = np.ones(len(candidates_mm), dtype=bool)
    ignored = 0
    for centre, diameter, is_reference in zip(nodules_mm, diameters, relevant, strict=True):
        distance2 = ((candidates_mm - centre) ** 2).sum(axis=1)
        hits = distance2 < (diameter / 2.0) ** 2
        if is_reference:
            if hits.any():
                labels.append(1.0)
                probs.append(float(probabilities[hits].max()))
                excluded.append(False)
            else:  # a missed nodule: only in the denominator
                labels.append(1.0)
                probs.append(-1e9)
                excluded.append(True)
            in_pool &= ~hits
        else:
            ignored += int((hits & in_pool).sum())
            in_pool &= ~hits
    for probability in probabilities[in_pool]:
        labels.append(0.0)
        probs.append(float(probability))
        excluded.append(False)
    return labels, probs, excluded, ignored


def froc_entries(
    candidates: pd.DataFrame,
    reference: pd.DataFrame,
    scans: Sequence[str],
    max_candidates: int = MAX_CANDIDATES,
) -> pd.DataFrame:
    """The FROC entries of every scan: ``seriesuid, is_nodule, probability, excluded``.

    ``candidates``: :data:`CANDIDATE_COLUMNS` (world mm); ``reference``:
    :data:`REFERENCE_COLUMNS` (``relevant`` False = irrelevant finding). Only ``scans`` count;
    candidates of other scans are dropped.
    """
    rows = []
    for scan in scans:
        own = candidates[candidates["seriesuid"] == scan]
        own = own[limit_candidates(own["probability"].to_numpy(), max_candidates)]
        ref = reference[reference["seriesuid"] == scan]
        labels, probs, excluded, _ = match_scan(
            own[["coordX", "coordY", "coordZ"]].to_numpy(),
            own["probability"].to_numpy(),
            ref[["coordX", "coordY", "coordZ"]].to_numpy(),
            ref["diameter_mm"].to_numpy(),
            ref["relevant"].to_numpy(),
        )
        rows += [(scan, lab, p, e) for lab, p, e in zip(labels, probs, excluded, strict=True)]
    return pd.DataFrame(rows, columns=["seriesuid", "is_nodule", "probability", "excluded"])


@dataclass(frozen=True)
class Froc:
    """An FROC curve: false positives per scan, sensitivity and threshold of each point."""

    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    threshold: np.ndarray
    n_scans: int
    n_nodules: int

    def sensitivity_at(self, points: Sequence[float] = OPERATING_POINTS) -> np.ndarray:
        return np.interp(np.asarray(points, dtype=float), self.fps_per_scan, self.sensitivity)

    def cpm(self) -> float:
        return float(np.mean(self.sensitivity_at(OPERATING_POINTS)))

    def threshold_at(self, fps_per_scan: float) -> float:
        """The lowest threshold whose false positives per scan stay at or below ``fps_per_scan``."""
        within = np.flatnonzero(self.fps_per_scan <= fps_per_scan)
        return float(self.threshold[within[-1]])

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "fps_per_scan": self.fps_per_scan,
                "sensitivity": self.sensitivity,
                "threshold": self.threshold,
            }
        )


def compute_froc(
    is_nodule: np.ndarray, probability: np.ndarray, excluded: np.ndarray, n_scans: int
) -> Froc:
    """The FROC of the entries of :func:`froc_entries` over ``n_scans`` scans."""
    is_nodule = np.asarray(is_nodule, dtype=float)
    probability = np.asarray(probability, dtype=float)
    excluded = np.asarray(excluded, dtype=bool)
    n_nodules = int(is_nodule.sum())
    label = is_nodule[~excluded]
    score = probability[~excluded]
    order = np.argsort(-score, kind="stable")
    label, score = label[order], score[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(score) != 0), len(score) - 1] if len(score) else []
    tp = np.r_[0.0, np.cumsum(label)[last_of_value]]
    fp = np.r_[0.0, np.cumsum(1 - label)[last_of_value]]
    thresholds = np.r_[np.inf, score[last_of_value]]
    fps = fp / max(n_scans, 1)
    sensitivity = np.full(len(tp), np.nan) if n_nodules == 0 else tp / n_nodules
    return Froc(fps, sensitivity, thresholds, int(n_scans), n_nodules)


def froc_of(entries: pd.DataFrame, n_scans: int) -> Froc:
    return compute_froc(
        entries["is_nodule"].to_numpy(),
        entries["probability"].to_numpy(),
        entries["excluded"].to_numpy(),
        n_scans,
    )


@dataclass(frozen=True)
class Bootstrap:
    """Bootstrapped CPM (per draw) and sensitivity bands on an FP grid."""

    cpm: np.ndarray  # (draws,)
    grid: np.ndarray  # false positives per scan
    sensitivity_mean: np.ndarray
    sensitivity_low: np.ndarray
    sensitivity_high: np.ndarray

    def cpm_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return ci_bounds(self.cpm, confidence)


def ci_bounds(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """LUNA16's ``computeMeanCI`` bounds: sorted values at floor(p n) and floor((1 - p) n)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    ordered = ordered[np.isfinite(ordered)]  # draws without a reference nodule have none
    if len(ordered) == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0
    low = ordered[int(math.floor(tail * len(ordered)))]
    high = ordered[min(int(math.floor((1.0 - tail) * len(ordered))), len(ordered) - 1)]
    return float(low), float(high)


def bootstrap(
    entries: pd.DataFrame,
    scans: Sequence[str],
    draws: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    grid: np.ndarray | None = None,
) -> Bootstrap:
    """Resample ``scans`` with replacement ``draws`` times; the FROC and CPM of each draw."""
    scans = list(scans)
    grid = np.geomspace(OPERATING_POINTS[0], OPERATING_POINTS[-1], 121) if grid is None else grid
    rng = np.random.default_rng(seed)
    per_scan = {scan: part for scan, part in entries.groupby("seriesuid", sort=False)}
    empty = entries.iloc[:0]
    cpms = np.empty(draws)
    curves = np.empty((draws, len(grid)))
    for draw in range(draws):
        chosen = rng.integers(0, len(scans), size=len(scans))
        parts = [per_scan.get(scans[i], empty) for i in chosen]
        froc = froc_of(pd.concat(parts) if parts else empty, len(scans))
        cpms[draw] = froc.cpm()
        curves[draw] = np.interp(grid, froc.fps_per_scan, froc.sensitivity)
    low_high = np.array([ci_bounds(curves[:, i], confidence) for i in range(len(grid))])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(curves, axis=0) if np.isfinite(curves).any() else curves[0]
    return Bootstrap(cpms, grid, mean, low_high[:, 0], low_high[:, 1])
