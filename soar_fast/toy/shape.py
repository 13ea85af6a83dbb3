"""Which shape a detected region is, from moments of its blend weights.

The weights (how much of the object's colour each pixel holds, 0–1) are summed over the region and a
one-pixel ring around it, so anti-aliased and blurred edges count for what they hold. Two numbers then
tell the three shapes apart, both unchanged by scale and, in the continuum, by Gaussian blur (blur
adds to the second cumulant of every projection and to nothing above it):

- `skew`: the third cumulant of the vertical projection over area^1.5 (× 100). An upright triangle
  −2.09 (its mass sits low), a triangle standing on its apex +2.09, circle and square 0.
- `corners`: the fourth cumulant of the diagonal projections minus that of the axis ones, over
  area² (× 1000). A square +4.17 (its projection is uniform along an axis and triangular along a
  diagonal), a circle 0 (the same in every direction), an upright triangle +0.14.

The thresholds sit halfway, where clean renders never come near them (docs/experiments.md).
"""

from __future__ import annotations

import numpy as np

TRIANGLE_SKEW = 1.0
SQUARE_CORNERS = 2.1


def dilate(mask: np.ndarray) -> np.ndarray:
    """`mask` grown by one pixel in the 8 directions."""
    h, w = mask.shape
    pad = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= pad[dy:dy + h, dx:dx + w]
    return out


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
