"""A detector for the shapes benchmark that needs no weights.

Background: the median of the border pixels, and the noise level from their spread. Each pixel is
then explained as a blend of the background and one palette colour: its blend weight toward colour k
is its projection on the line from the background to k, and its distance from that segment is what
the blend leaves unexplained. A pixel is of colour k when it is more k than background (weight ≥ ½,
which puts an anti-aliased or blurred edge where the sharp edge was) and k explains it best, within a
tolerance. Connected regions of one colour are objects; specks, sprawls and thin smears are not.
The shape comes from moments of the region's blend weights (shape.py). docs/experiments.md gives the
accuracies on clean, blurred and noisy pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from soar_fast.toy.palette import COLORS, PALETTE
from soar_fast.toy.shape import MAX_RINGS, classify, moments, rings, territories

_PALETTE = np.array([PALETTE[c] for c in COLORS], dtype=np.float64)
# A pixel's colour may miss its blend line by TOLERANCE RGB units, or by NOISE_TOLERANCE noise σ when
# the image is noisier, never by more than MAX_TOLERANCE (wider, and i.i.d. noise alone fills a third
# of RGB space with "object" pixels); the blend weight toward it must reach ½ (module docstring).
TOLERANCE = 60.0
NOISE_TOLERANCE = 3.5
MAX_TOLERANCE = 90.0
# Border noise σ beyond which the background is not plain and nothing in the image is trusted (at 50
# a 32 px picture still keeps 0.79 of its clean score, at 70 under 0.2).
MAX_NOISE = 70.0
# Regions of fewer pixels than MIN_AREA are specks (a 6 px triangle still has 15); regions filling
# under MIN_FILL of their box, or longer than MAX_ASPECT to one, are smears, not shapes (the shapes
# fill half their box or more, at aspect 1).
MIN_AREA = 10
# Above this border noise σ, the edge halo is noise as much as blur: moments use the one-pixel ring.
SHARP_NOISE = 8.0
MIN_FILL = 0.35
MAX_ASPECT = 2.0


@dataclass(frozen=True)
class Detection:
    """One object: `box` is (x0, y0, x1, y1) in pixels, x1 and y1 exclusive; `area` in pixels."""

    color: str
    shape: str
    box: tuple[int, int, int, int]
    area: int


def _background(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    bg = np.median(border, axis=0)
    # Robust spread (MAD → σ): objects touching the border move it less than a standard deviation would.
    noise = float(1.4826 * np.median(np.abs(border - bg), axis=0).mean())
    return bg, noise


def colour_map(rgb: np.ndarray, bg: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the palette index that explains it best, or -1 for background (H×W int), and every
    pixel's blend weight toward each palette colour (H×W×K)."""
    diff = rgb - bg                                            # H, W, 3
    line = _PALETTE - bg                                       # K, 3
    weight = diff @ line.T / np.maximum((line * line).sum(1), 1.0)    # H, W, K
    nearest = np.clip(weight, 0.0, 1.0)[..., None] * line      # H, W, K, 3
    miss = np.linalg.norm(diff[..., None, :] - nearest, axis=-1)
    # The best explanation first, then "more object than background": choosing among the colours whose
    # weight passes ½ would give an object's 40 % edge to a neighbour colour that passes it loosely.
    best = miss.argmin(-1)
    own = np.take_along_axis(weight, best[..., None], -1)[..., 0]
    ok = (own >= 0.5) & (np.take_along_axis(miss, best[..., None], -1)[..., 0] <= tolerance)
    return np.where(ok, best, -1), weight


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected regions of `mask`, each as the flat indices of its pixels, largest first."""
    h, w = mask.shape
    if not mask.any():
        return []
    big = h * w
    ids = np.arange(big).reshape(h, w)
    label = np.where(mask, ids, big)
    while True:
        pad = np.pad(label, 1, constant_values=big)
        low = label
        for dy in range(3):
            for dx in range(3):
                low = np.minimum(low, pad[dy:dy + h, dx:dx + w])
        low = np.where(mask, low, big)
        # Pointer jumping: a label is a pixel of the same region, whose own label is at least as low.
        flat = low.ravel()
        low = np.where(mask, flat[np.minimum(low, big - 1)], big)
        if np.array_equal(low, label):
            break
        label = low
    flat = label.ravel()
    order = np.argsort(flat, kind="stable")
    keys = flat[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    groups = [g for g in np.split(order, cuts) if flat[g[0]] != big]
    return sorted(groups, key=len, reverse=True)


def _box(pixels: np.ndarray, w: int) -> tuple[int, int, int, int]:
    ys, xs = pixels // w, pixels % w
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def detect(image: Image.Image) -> list[Detection]:
    """The palette objects in `image`, largest first (GenEval orders by confidence; here a larger
    region is the surer one)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = rgb.shape[:2]
    bg, noise = _background(rgb)
    if noise > MAX_NOISE:
        return []
    labels, weight = colour_map(rgb, bg, min(max(TOLERANCE, NOISE_TOLERANCE * noise), MAX_TOLERANCE))
    regions = []
    for k in range(len(COLORS)):
        for pixels in components(labels == k):
            x0, y0, x1, y1 = box = _box(pixels, w)
            bw, bh = x1 - x0, y1 - y0
            if len(pixels) >= MIN_AREA and len(pixels) >= MIN_FILL * bw * bh and 1 / MAX_ASPECT <= bw / bh <= MAX_ASPECT:
                regions.append((k, pixels, box))
    owner, distance = territories([pixels for _, pixels, _ in regions], (h, w))
    found = []
    for index, (k, pixels, (x0, y0, x1, y1)) in enumerate(regions):
        # Moments do not depend on where the object is: work in its box and the widest ring.
        cy = slice(max(y0 - MAX_RINGS, 0), y1 + MAX_RINGS)
        cx = slice(max(x0 - MAX_RINGS, 0), x1 + MAX_RINGS)
        mine = owner[cy, cx] == index
        own = np.clip(weight[cy, cx, k], 0.0, 1.0)
        ring = rings(mine, distance[cy, cx], own) if noise <= SHARP_NOISE else 1
        m = moments(np.where(mine & (distance[cy, cx] <= ring), own, 0.0))
        found.append(Detection(COLORS[k], classify(m), (x0, y0, x1, y1), len(pixels)))
    return sorted(found, key=lambda d: (-d.area, d.box[1], d.box[0]))
