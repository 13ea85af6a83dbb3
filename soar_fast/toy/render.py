"""Drawing one image that satisfies a prompt's tags.

Shapes are drawn at 4× and box-filtered down, so their edges are anti-aliased as a model's would be,
and their boxes sit on a quarter-pixel grid. Objects never touch one another or the image border,
and a position prompt's pair is placed so that GenEval's rule finds the asked relation and no other,
with a margin (a clean render must score as right, whatever its exact pixels).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from soar_fast.toy.palette import BACKGROUND_LEVELS, BACKGROUND_TINT, COLORS, PALETTE, SHAPES
from soar_fast.toy.relations import revised_offset

SUPERSAMPLE = 4
# Box side as a fraction of the image side, by number of objects; never under MIN_SIDE_PX pixels,
# below which a triangle's tip is a single blended pixel.
SIZE_RANGE = {1: (0.30, 0.55), 2: (0.24, 0.40), 3: (0.20, 0.30), 4: (0.20, 0.28)}
MIN_SIDE_PX = 7.0
# A position pair: the asked component of GenEval's revised offset beyond this, the other within
# OFF_AXIS_MAX (GenEval itself needs 0.5 and finds a second relation beyond 0.5).
ON_AXIS_MIN = 0.8
OFF_AXIS_MAX = 0.3
_AXIS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}


@dataclass(frozen=True)
class Placed:
    """One object to draw: `box` is (x0, y0, x1, y1) in output pixels, x1 and y1 exclusive."""

    shape: str
    color: str
    box: tuple[float, float, float, float]


def _rng(rng: random.Random | int | None) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def background(rng: random.Random) -> tuple[int, int, int]:
    level = rng.randint(*BACKGROUND_LEVELS)
    return tuple(level + rng.randint(-BACKGROUND_TINT, BACKGROUND_TINT) for _ in range(3))


def _snap(value: float) -> float:
    return round(value * SUPERSAMPLE) / SUPERSAMPLE


def _apart(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _clear(box_a: tuple[float, ...], box_b: tuple[float, ...], relation: str) -> bool:
    axis, sign = _AXIS[relation]
    offset = revised_offset(box_a, box_b)
    return offset[axis] * sign >= ON_AXIS_MIN and abs(offset[1 - axis]) <= OFF_AXIS_MAX


def _boxes(n: int, side: int, rng: random.Random, relation: str | None) -> list[tuple[float, ...]]:
    lo, hi = SIZE_RANGE[n]
    lo, hi = max(lo * side, MIN_SIDE_PX), max(hi * side, MIN_SIDE_PX)
    margin, gap = max(1.0, side / 32), max(2.0, side / 16)
    for _ in range(1000):
        boxes: list[tuple[float, ...]] = []
        for _ in range(n):
            s = _snap(rng.uniform(lo, hi))
            for _ in range(100):
                x0 = _snap(rng.uniform(margin, side - margin - s))
                y0 = _snap(rng.uniform(margin, side - margin - s))
                box = (x0, y0, x0 + s, y0 + s)
                if all(_apart(box, other, gap) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        # The subject is the second object of a position prompt (GenEval lists the target first).
        if len(boxes) == n and (relation is None or _clear(boxes[1], boxes[0], relation)):
            return boxes
    raise RuntimeError(f"no layout of {n} objects found in {side} px")


def layout(tags: dict, side: int, rng: random.Random | int | None = None) -> list[Placed]:
    """Objects satisfying `tags`: each include clause's count of its shape, in its colour when it
    names one and a uniform palette colour when not."""
    rng = _rng(rng)
    for req in tags["include"]:
        if req["class"] not in SHAPES or req.get("color", COLORS[0]) not in PALETTE or not 1 <= req["count"] <= 4:
            raise ValueError(f"tags.include: {req} is not drawable (shapes {', '.join(SHAPES)}; colours "
                             f"{', '.join(COLORS)}; 1 to 4 objects)")
    objects = [(req["class"], req.get("color") or rng.choice(COLORS))
               for req in tags["include"] for _ in range(req["count"])]
    if not 1 <= len(objects) <= max(SIZE_RANGE):
        raise ValueError(f"tags.include: {len(objects)} objects; 1 to {max(SIZE_RANGE)} can be drawn")
    relation = next((r["position"][0] for r in tags["include"] if "position" in r), None)
    boxes = _boxes(len(objects), side, rng, relation)
    return [Placed(shape, color, box) for (shape, color), box in zip(objects, boxes)]


def draw(objects: list[Placed], side: int, bg: tuple[int, int, int]) -> Image.Image:
    """The objects on a plain `bg` background, side × side pixels."""
    big = Image.new("RGB", (side * SUPERSAMPLE, side * SUPERSAMPLE), bg)
    pen = ImageDraw.Draw(big)
    for obj in objects:
        x0, y0, x1, y1 = (round(v * SUPERSAMPLE) for v in obj.box)
        fill = PALETTE[obj.color]
        # PIL's ellipse and rectangle include their end pixel; the box's end is exclusive.
        if obj.shape == "circle":
            pen.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            pen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "triangle":
            pen.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
        else:
            raise ValueError(f"shape {obj.shape!r} is not one of circle, square, triangle")
    return big.reduce(SUPERSAMPLE)


def render(tags: dict, side: int = 32, rng: random.Random | int | None = None) -> Image.Image:
    """One side × side image satisfying `tags`, on a generated grey background."""
    rng = _rng(rng)
    bg = background(rng)
    return draw(layout(tags, side, rng), side, bg)
