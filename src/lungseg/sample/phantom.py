"""Synthetic chest CT in HU around real LIDC geometry and nodule annotations (sample data).

Anatomy is drawn slice by slice from ellipses in coordinates normalised to the field of view
(``u`` left-right, ``v`` anterior-posterior, both -1..1), so it scales with the pixel spacing like
a real reconstruction would. Edges are one-pixel linear ramps (partial volume). The lungs span the
z range of the scan's nodules; vessels are random branching trees in mm, rasterised once per scan;
nodules are the readers' agreement maps from :mod:`lungseg.lidc.adapter`, slightly blurred, so the
50 %
consensus contour is the 50 % intensity contour. Each nodule keeps a thin pocket of lung around it,
so a nodule the real readers drew at the pleura also touches the synthetic pleura at most.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lungseg.lidc.adapter import Nodule, ScanInfo

AIR, FAT, SOFT, MUSCLE, LUNG = -1000.0, -100.0, 40.0, 50.0, -860.0
BONE_CORTEX, BONE_MARROW, BLOOD, BLOOD_CONTRAST = 700.0, 220.0, 40.0, 170.0
#: noise standard deviation (HU) of a 2.5 mm slice; thinner slices are noisier
NOISE_HU_AT_2_5_MM = 18.0
HALF = 256.0  # half the slice width in pixels
#: largest enlargement of the lung ellipses to take in a nodule (they stay inside the ribs)
MAX_LUNG_SCALE = 1.6


@dataclass(frozen=True)
class _Window:
    """A nodule prepared for painting: blend weight and HU in a box of the volume."""

    z0: int
    y0: int
    x0: int
    alpha: np.ndarray  # (z, y, x) float32, 0..1
    hu: np.ndarray  # (z, y, x) float32
    lung: np.ndarray  # (z, y, x) float32, 0..1: lung pocket around the nodule


def _ellipse_alpha(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float
) -> np.ndarray:
    """Occupancy of an ellipse with a one-pixel ramp at its border (approximate distance)."""
    rho = np.sqrt(((u - cu) / au) ** 2 + ((v - cv) / av) ** 2)
    return np.clip(0.5 - (rho - 1.0) * (min(au, av) * HALF), 0.0, 1.0)


def _blend(image: np.ndarray, alpha: np.ndarray, hu: float | np.ndarray) -> None:
    image += alpha * (hu - image)


def _ellipse_window(
    shape: tuple[int, ...], grid: tuple[np.ndarray, np.ndarray], ellipse: tuple
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """An ellipse's occupancy computed only inside its bounding window: (window, alpha)."""
    cu, cv, au, av = ellipse
    c0 = max(int((cu - au) * HALF + HALF) - 2, 0)
    c1 = min(int((cu + au) * HALF + HALF) + 3, shape[1])
    r0 = max(int((cv - av) * HALF + HALF) - 2, 0)
    r1 = min(int((cv + av) * HALF + HALF) + 3, shape[0])
    if c1 <= c0 or r1 <= r0:
        return None
    u, v = grid[0][:, c0:c1], grid[1][r0:r1, :]
    return (slice(r0, r1), slice(c0, c1)), _ellipse_alpha(u, v, cu, cv, au, av)


def _blend_ellipse(
    image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], ellipse: tuple, hu: float
) -> None:
    """Blend a small ellipse of constant HU into ``image``."""
    found = _ellipse_window(image.shape, grid, ellipse)
    if found is not None:
        _blend(image[found[0]], found[1], hu)


def _max_ellipse(
    occupancy: np.ndarray, grid: tuple[np.ndarray, np.ndarray], ellipse: tuple
) -> None:
    """Add an ellipse to an occupancy map (maximum)."""
    found = _ellipse_window(occupancy.shape, grid, ellipse)
    if found is not None:
        region = occupancy[found[0]]
        np.maximum(region, found[1], out=region)


def _lung_profile(t: float) -> float:
    """Lung size along z (0 below the lungs, 1 at the widest, tapering to the apex)."""
    base = np.clip((t - 0.04) / 0.2, 0.0, 1.0)
    apex = np.sqrt(np.clip((0.99 - t) / 0.45, 0.0, 1.0))
    return float(base * min(apex, 1.0))


def _vessel_tree(rng: np.random.Generator, hilum: np.ndarray, side: float, reach: np.ndarray):
    """Segments ``(p0, p1, radius)`` in mm (z, y, x) of one lung's branching vessel tree."""
    segments = []
    stack = []
    for _ in range(8):  # trunks leaving the hilum in all directions
        direction = rng.normal(size=3) * np.array([1.0, 0.6, 0.4])
        direction[2] = abs(direction[2]) * side + 0.4 * side
        stack.append((hilum, direction / np.linalg.norm(direction), 4.5, 0))
    while stack:
        start, direction, radius, depth = stack.pop()
        length = reach[depth] * rng.uniform(0.7, 1.1)
        end = start + direction * length
        segments.append((start, end, radius))
        if depth + 1 >= len(reach):
            continue
        for _ in range(2):
            turn = rng.normal(size=3)
            turn -= turn.dot(direction) * direction
            turn /= np.linalg.norm(turn) + 1e-9
            angle = rng.uniform(0.35, 0.75)
            child = np.cos(angle) * direction + np.sin(angle) * turn
            stack.append((end, child / np.linalg.norm(child), radius * 0.74, depth + 1))
    return segments


def _rasterise_vessels(scan: ScanInfo, segments, shape: tuple[int, int, int]) -> np.ndarray:
    """Vessel occupancy (uint8, 255 = full) from tube segments, one small box per segment."""
    zvals = np.asarray(scan.slice_zvals)
    spacing = scan.pixel_spacing
    volume = np.zeros(shape, dtype=np.uint8)
    for p0, p1, radius in segments:
        lo = np.minimum(p0, p1) - radius - spacing
        hi = np.maximum(p0, p1) + radius + spacing
        k0, k1 = np.searchsorted(zvals, [lo[0], hi[0]])
        y0, x0 = np.maximum(np.floor(lo[1:] / spacing + HALF - 0.5), 0).astype(int)
        y1, x1 = np.minimum(np.ceil(hi[1:] / spacing + HALF - 0.5) + 1, shape[1:]).astype(int)
        if k1 <= k0 or y1 <= y0 or x1 <= x0:
            continue
        z = zvals[k0:k1, None, None]
        y = ((np.arange(y0, y1) - HALF + 0.5) * spacing)[None, :, None]
        x = ((np.arange(x0, x1) - HALF + 0.5) * spacing)[None, None, :]
        axis = p1 - p0
        t = ((z - p0[0]) * axis[0] + (y - p0[1]) * axis[1] + (x - p0[2]) * axis[2]) / max(
            axis.dot(axis), 1e-9
        )
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt(
            (z - p0[0] - t * axis[0]) ** 2
            + (y - p0[1] - t * axis[1]) ** 2
            + (x - p0[2] - t * axis[2]) ** 2
        )
        occupancy = np.clip(0.5 + (radius - dist) / spacing, 0.0, 1.0)
        box = volume[k0:k1, y0:y1, x0:x1]
        np.maximum(box, (occupancy * 255).astype(np.uint8), out=box)
    return volume


def nodule_intensity(nodule: Nodule, rng: np.random.Generator) -> tuple[str, float, float]:
    """Appearance after the readers' median ratings: (kind, rim HU, core HU).

    LIDC texture 1-2 is non-solid (ground glass), 3 part-solid, 4-5 solid; calcification 1-5 is
    some pattern of calcium, 6 none.
    """
    texture = nodule.characteristics.get("texture", 5.0)
    calcified = nodule.characteristics.get("calcification", 6.0) < 5.5
    solid = float(rng.uniform(-10.0, 60.0))
    ground_glass = float(rng.uniform(-650.0, -480.0))
    if calcified:
        return "calcified", solid, float(rng.uniform(350.0, 800.0))
    if texture <= 2.0:
        return "ground-glass", ground_glass, ground_glass
    if texture < 4.0:
        return "part-solid", ground_glass, solid
    return "solid", solid, solid


def _prepare_nodule(
    nodule: Nodule, shape: tuple[int, int, int], spacing: float, rng: np.random.Generator
) -> _Window:
    pad_yx = int(np.ceil(3.0 / spacing)) + 2
    pad = np.array([2, pad_yx, pad_yx])
    z0, z1, y0, y1, x0, x1 = nodule.agreement_bbox
    lo = np.maximum(np.array([z0, y0, x0]) - pad, 0)
    hi = np.minimum(np.array([z1, y1, x1]) + pad, shape)
    agreement = np.zeros(hi - lo, dtype=np.float32)
    agreement[z0 - lo[0] : z1 - lo[0], y0 - lo[1] : y1 - lo[1], x0 - lo[2] : x1 - lo[2]] = (
        nodule.agreement
    )
    consensus = np.zeros(agreement.shape, dtype=bool)
    bz0, bz1, by0, by1, bx0, bx1 = nodule.bbox
    consensus[bz0 - lo[0] : bz1 - lo[0], by0 - lo[1] : by1 - lo[1], bx0 - lo[2] : bx1 - lo[2]] = (
        nodule.local_mask
    )
    # Consensus voxels are mostly nodule, the readers' disagreement rim a faint halo; blurred,
    # the half-intensity contour follows the consensus contour.
    source = np.where(consensus, 0.6 + 0.4 * agreement, 0.6 * agreement)
    smooth = ndimage.gaussian_filter(source, sigma=(0.35, 0.6, 0.6))
    alpha = np.clip((smooth - 0.15) / 0.7, 0.0, 1.0)
    _kind, rim, core = nodule_intensity(nodule, rng)
    hu = np.full(alpha.shape, rim, dtype=np.float32)
    if core != rim:
        inside = ndimage.distance_transform_edt(consensus, sampling=(2.0, 1.0, 1.0))
        core_mask = inside > max(0.45 * inside.max(), 1.0)
        weight = ndimage.gaussian_filter(core_mask.astype(np.float32), sigma=(0.35, 0.8, 0.8))
        hu += weight * (core - rim)
    pocket_sigma = (0.3, 1.0 / spacing, 1.0 / spacing)
    lung = np.clip(ndimage.gaussian_filter((agreement > 0).astype(np.float32), pocket_sigma), 0, 1)
    lung = np.clip(lung * 6.0, 0.0, 1.0)
    return _Window(int(lo[0]), int(lo[1]), int(lo[2]), alpha, hu, lung)


def _paste(
    target: np.ndarray, window: _Window, k: int, values: np.ndarray, how: str, weight=None
) -> None:
    rows, cols = values.shape[1:]
    region = target[window.y0 : window.y0 + rows, window.x0 : window.x0 + cols]
    plane = values[k - window.z0]
    if how == "max":
        np.maximum(region, plane, out=region)
    else:
        _blend(region, weight[k - window.z0], plane)


def _nodule_points(window: _Window) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Per slice of a nodule window: ``(k, u, v)`` of the pixels its lung pocket covers."""
    for dz, plane in enumerate(window.lung):
        rows, cols = np.nonzero(plane > 0.5)
        if len(rows):
            u = (cols + window.x0 - HALF + 0.5) / HALF
            v = (rows + window.y0 - HALF + 0.5) / HALF
            yield window.z0 + dz, u, v


def _cavity_growth(windows: list[_Window], vc: float, au: float, av: float, margin: float) -> float:
    """Factor by which the chest cavity must grow so that every nodule lies inside it."""
    rho = [
        np.sqrt((u / au) ** 2 + ((v - vc) / av) ** 2).max() + margin / min(au, av)
        for window in windows
        for _k, u, v in _nodule_points(window)
    ]
    return max([1.0, *rho])


def _lung_sizes(
    scan: ScanInfo, windows: list[_Window], lungs: tuple[tuple[float, ...], ...]
) -> np.ndarray:
    """Scale of the lung ellipses on every slice: a chest-like z profile, enlarged where needed
    so that each nodule (plus a 3 mm margin) lies inside a lung."""
    zvals = np.asarray(scan.slice_zvals)
    extent = max(zvals[-1] - zvals[0], 1.0)
    sizes = np.array([_lung_profile(t) for t in (zvals - zvals[0]) / extent])
    needed = np.zeros_like(sizes)
    margin = 3.0 / (HALF * scan.pixel_spacing)
    for window in windows:
        for k, u, v in _nodule_points(window):
            for cu, cv, au, av in lungs:
                side = (u * cu) > 0
                if side.any():
                    rho = np.sqrt(((u[side] - cu) / au) ** 2 + ((v[side] - cv) / av) ** 2)
                    needed[k] = max(needed[k], rho.max() + margin / min(au, av))
    needed = ndimage.maximum_filter1d(np.minimum(needed, MAX_LUNG_SCALE), size=5)
    return np.maximum(sizes, needed)


def render_scan(
    scan: ScanInfo, nodules: list[Nodule], rng: np.random.Generator
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(k, hu, outside_fov)`` for every slice ``k`` (ascending z): float32 HU (512, 512)."""
    n_slices = scan.n_slices
    shape = (n_slices, 2 * int(HALF), 2 * int(HALF))
    spacing = scan.pixel_spacing
    fov_mm = 2 * HALF * spacing
    zvals = np.asarray(scan.slice_zvals)
    centres = (np.arange(shape[1], dtype=np.float32) - HALF + 0.5) / HALF
    grid = (centres[None, :], centres[:, None])  # u (columns), v (rows)
    u, v = grid
    outside_fov = (u**2 + v**2) > 1.0

    # Per-scan anatomy. Lung ellipses match where LIDC nodules lie in the field of view.
    vc = 0.05
    body_au, body_av = rng.uniform(0.9, 0.96), rng.uniform(0.7, 0.78)
    fat = rng.uniform(5.0, 15.0) / (fov_mm / 2)
    cavity_au, cavity_av = body_au - fat - 0.05, body_av - 0.8 * fat - 0.05
    windows = [_prepare_nodule(n, shape, spacing, rng) for n in nodules]
    # A wider chest where a nodule would otherwise sit in the chest wall (3 mm margin).
    grow = _cavity_growth(windows, vc, cavity_au, cavity_av, 3.0 / (HALF * spacing))
    cavity_au, cavity_av = cavity_au * grow, cavity_av * grow
    wall_au, wall_av = cavity_au + 0.05, cavity_av + 0.05
    body_au, body_av = wall_au + fat, wall_av + 0.8 * fat
    lung_scale = rng.uniform(0.95, 1.02)
    lungs = tuple((side * 0.42, vc, 0.36 * lung_scale, 0.58 * lung_scale) for side in (-1.0, 1.0))
    rib_period = rng.uniform(22.0, 30.0)
    rib_phase = rng.uniform(0.0, rib_period)
    blood = BLOOD_CONTRAST if scan.contrast_used else BLOOD
    spine_v = vc + cavity_av - 0.04

    sizes = _lung_sizes(scan, windows, lungs)
    lung_slices = np.nonzero(sizes > 0)[0]
    lung_lo = zvals[lung_slices[0]] if len(lung_slices) else zvals[0]
    lung_hi = zvals[lung_slices[-1]] if len(lung_slices) else zvals[-1]
    lung_span = max(lung_hi - lung_lo, 1.0)
    hilum_z = lung_lo + 0.6 * lung_span
    reach = np.array([40.0, 30.0, 24.0, 18.0, 13.0, 10.0, 7.0]) * min(lung_span / 250.0, 1.4)
    segments = []
    for cu, _cv, _au, _av in lungs:
        hilum = np.array([hilum_z, 0.0, np.sign(cu) * 0.18 * fov_mm / 2])
        segments += _vessel_tree(rng, hilum, float(np.sign(cu)), reach)
    vessels = _rasterise_vessels(scan, segments, shape)
    noise_sd = NOISE_HU_AT_2_5_MM * np.sqrt(2.5 / max(scan.slice_thickness, 0.5))

    # Everything that does not change along z, drawn once.
    static = np.full(shape[1:], AIR, dtype=np.float32)
    _blend(static, _ellipse_alpha(u, v, 0.0, vc, body_au, body_av), FAT)
    _blend(static, _ellipse_alpha(u, v, 0.0, vc, wall_au, wall_av), MUSCLE)
    cavity = _ellipse_alpha(u, v, 0.0, vc, cavity_au, cavity_av)
    _blend(static, cavity, SOFT)
    _blend_ellipse(static, grid, (0.0, spine_v, 0.09, 0.08), BONE_CORTEX)
    _blend_ellipse(static, grid, (0.0, spine_v, 0.075, 0.065), BONE_MARROW)
    _blend_ellipse(static, grid, (0.0, spine_v + 0.1, 0.035, 0.03), SOFT)  # spinal canal
    _blend_ellipse(static, grid, (0.0, vc - cavity_av + 0.01, 0.06, 0.018), BONE_MARROW)
    heart = _ellipse_alpha(u, v, 0.1, vc - 0.15, 0.24, 0.22)
    lung_hu = (LUNG + 60.0 * (v + 1.0)) * np.ones_like(u)  # denser towards the back

    for k in range(n_slices):
        z = zvals[k]
        t = (z - lung_lo) / lung_span
        size = float(sizes[k])
        image = static.copy()
        # Ribs: short arcs in the chest wall whose z position drifts around the body.
        for angle in np.linspace(-2.6, 2.6, 18):
            phase = (z + rib_phase + 14.0 * np.cos(angle)) % rib_period
            if phase > 9.0:
                continue
            ru = np.sin(angle) * (cavity_au + 0.025)
            rv = vc - np.cos(angle) * (cavity_av + 0.025)
            _blend_ellipse(image, grid, (ru, rv, 0.03, 0.022), BONE_CORTEX)
            _blend_ellipse(image, grid, (ru, rv, 0.018, 0.011), BONE_MARROW)
        # Mediastinum (heart low, aorta higher up) is drawn first and kept out of the lungs.
        has_heart = t < 0.55
        if has_heart:
            _blend(image, heart, blood)
        if t > 0.35:
            _blend_ellipse(image, grid, (-0.02, spine_v - 0.16, 0.055, 0.055), blood)
        # Lungs: ellipses inside the ribs, with vessels.
        lung = np.zeros(shape[1:], dtype=np.float32)
        if size > 0:
            for cu, cv, au, av in lungs:
                _max_ellipse(lung, grid, (cu, cv, au * size, av * size))
            np.minimum(lung, cavity, out=lung)
            if has_heart:
                np.minimum(lung, 1.0 - heart, out=lung)
        for window in windows:
            if window.z0 <= k < window.z0 + window.lung.shape[0]:
                _paste(lung, window, k, window.lung, "max")
        _blend(image, lung, lung_hu)
        _blend(image, lung * (vessels[k] * np.float32(1 / 255)), blood)
        if t > 0.6:
            _blend_ellipse(image, grid, (0.0, spine_v - 0.32, 0.045, 0.04), AIR)  # trachea
        for window in windows:
            if window.z0 <= k < window.z0 + window.alpha.shape[0]:
                _paste(image, window, k, window.hu, "blend", weight=window.alpha)
        # Scanner-like noise: white noise summed over 2 x 2 pixels is spatially correlated.
        white = rng.standard_normal((shape[1] + 1, shape[2] + 1), dtype=np.float32)
        noise = white[:-1, :-1] + white[1:, :-1] + white[:-1, 1:] + white[1:, 1:]
        image += noise * np.float32(noise_sd / 2.0)
        yield k, image, outside_fov
