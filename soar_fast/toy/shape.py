"""Which shape a detected region is, from moments of its blend weights.

The weights (how much of the object's colour each pixel holds, 0–1) are summed over the region and a
ring around it, so anti-aliased and blurred edges count for what they hold: one pixel wide for a sharp
or a noisy picture, up to six for a blurred one (`rings`; a wide ring on a noisy picture gathers
more noise than edge), and never over a neighbour's halo (`territories`). Two numbers then tell the
three shapes apart, both unchanged by scale and, in the continuum, by Gaussian blur (blur adds to
the second cumulant of every projection and to nothing above it):

- `skew`: the third cumulant of the vertical projection over area^1.5 (× 100). An upright triangle
  −2.10 (its mass sits low), a triangle standing on its apex +2.10, circle and square 0.
- `corners`: the fourth cumulant of the diagonal projections minus that of the axis ones, over
  area² (× 1000). A square +4.17 (its projection is uniform along an axis and triangular along a
  diagonal), a circle 0 (the same in every direction), an upright triangle +0.12.

The thresholds sit halfway, where clean renders never come near them (docs/experiments.md).
"""

from __future__ import annotations

import numpy as np

TRIANGLE_SKEW = 1.0
SQUARE_CORNERS = 2.1
MAX_RINGS = 6
# Weights this far above the background count as an edge's halo; the halo per boundary pixel grows
# with blur: ~0.3 on a sharp anti-aliased render, 1.5 at Gaussian σ = 1 px, 2.5 at σ = 1.5 px.
HALO_WEIGHT = 0.1


def dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel in the 8 directions."""
    h, w = mask.shape
    pad = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= pad[dy:dy + h, dx:dx + w]
    return out


def territories(regions: list[np.ndarray], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel within MAX_RINGS of a region (given as flat pixel indices) goes to the nearest one
    (8-neighbour steps; ties to the lower index), so no object's ring sums a neighbour's halo.
    Returns the owner index (-1: none) and the distance in steps (0 inside a region) per pixel."""
    h, w = shape
    owner = np.full(h * w, -1, dtype=np.int64)
    for index, pixels in enumerate(regions):
        owner[pixels] = index
    owner = owner.reshape(h, w)
    distance = np.where(owner >= 0, 0, MAX_RINGS + 1)
    big = len(regions)
    for step in range(1, MAX_RINGS + 1):
        pad = np.pad(np.where(owner >= 0, owner, big), 1, constant_values=big)
        nearest = np.full((h, w), big)
        for dy in range(3):
            for dx in range(3):
                nearest = np.minimum(nearest, pad[dy:dy + h, dx:dx + w])
        grow = (owner < 0) & (nearest < big)
        owner = np.where(grow, nearest, owner)
        distance = np.where(grow, step, distance)
    return owner, distance


def rings(mine: np.ndarray, distance: np.ndarray, weight: np.ndarray) -> int:
    """How many pixels of ring to sum weights over: the halo's width in pixels beyond the region's
    edge, rounded up, 1 to MAX_RINGS. `mine` marks the region's territory, `distance` the steps from it."""
    region = mine & (distance == 0)
    boundary = int((region & ~dilate(~region)).sum())
    halo = int((mine & (distance > 0) & (weight >= HALO_WEIGHT)).sum())
    return int(np.clip(np.ceil(halo / max(boundary, 1)), 1, MAX_RINGS))


def _cumulants(z: np.ndarray, w: np.ndarray, area: float) -> tuple[float, float, float]:
    mean = float((w * z).sum() / area)
    c = z - mean
    m2, m3, m4 = ((w * c**p).sum() / area for p in (2, 3, 4))
    return float(m2), float(m3), float(m4 - 3 * m2 * m2)


def moments(weight: np.ndarray) -> dict:
    """`area`, `skew` and `corners` (see the module docstring) of an H×W weight map that is zero
    outside the object."""
    area = float(weight.sum())
    if area <= 0:
        return {"area": 0.0, "skew": 0.0, "corners": 0.0}
    ys, xs = np.indices(weight.shape, dtype=np.float64)
    x, y = _cumulants(xs, weight, area), _cumulants(ys, weight, area)
    u = _cumulants((xs + ys) / np.sqrt(2), weight, area)
    v = _cumulants((xs - ys) / np.sqrt(2), weight, area)
    return {"area": area, "skew": 100 * y[1] / area**1.5,
            "corners": 1000 * ((u[2] + v[2]) - (x[2] + y[2])) / 2 / area**2}


def classify(m: dict) -> str:
    if abs(m["skew"]) > TRIANGLE_SKEW:
        return "triangle"
    return "square" if m["corners"] > SQUARE_CORNERS else "circle"
