"""The shapes benchmark's vocabulary: the object colours, the shapes, and the background tones.

A leaf shared by the generator and the detector, so what one draws the other knows. The colours sit
far apart in RGB (the closest pair, blue and purple, is 116 apart) and at least 100 from every
generated background, which is what lets the detector tell an object from the background by colour
alone.
"""

from __future__ import annotations

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 50, 200),
    "cyan": (40, 200, 210),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("one", "two", "three", "four")
MAX_COUNT = len(NUMBERS)

# Generated backgrounds: a grey level in this range with a small per-channel tint.
BACKGROUND_LEVELS = (80, 180)
BACKGROUND_TINT = 8


def plural(shape: str) -> str:
    return shape + "s"
