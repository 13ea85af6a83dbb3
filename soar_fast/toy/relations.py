"""GenEval's relative position of two boxes, factoring in their sizes.

The centre offset of A from B is shrunk on each axis by 0.1 × the sum of the two boxes' extents on
that axis, then divided by the unshrunk offset's length; a component beyond ±0.5 names a relation.
Boxes are (x0, y0, x1, y1) in pixels with y growing downwards, so "above" is a negative dy.
"""

from __future__ import annotations

import math

POSITION_THRESHOLD = 0.1


def revised_offset(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> tuple[float, float]:
    """(dx, dy) of A relative to B after the size allowance; (0, 0) when the centres coincide."""
    ox = (box_a[0] + box_a[2] - box_b[0] - box_b[2]) / 2
    oy = (box_a[1] + box_a[3] - box_b[1] - box_b[3]) / 2
    norm = math.hypot(ox, oy)
    if norm == 0:
        return 0.0, 0.0
    wx = POSITION_THRESHOLD * (abs(box_a[2] - box_a[0]) + abs(box_b[2] - box_b[0]))
    wy = POSITION_THRESHOLD * (abs(box_a[3] - box_a[1]) + abs(box_b[3] - box_b[1]))
    rx = math.copysign(max(abs(ox) - wx, 0.0), ox)
    ry = math.copysign(max(abs(oy) - wy, 0.0), oy)
    if abs(rx) < 1e-3 and abs(ry) < 1e-3:
        return 0.0, 0.0
    return rx / norm, ry / norm


def relations(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> set[str]:
    """Every relation A holds to B ("left of", "right of", "above", "below"); can be empty or two."""
    dx, dy = revised_offset(box_a, box_b)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found
