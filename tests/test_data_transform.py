"""The per-sample transform (docs/data.md, "Format"): cover resize (Lanczos), crop along the long axis,
flip, [-1, 1]."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

from soar_fast.data.transform import augment_draws, cover_crop, to_pixels
from tests.tolerances import assert_close


def _noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_wide_source_matches_height_and_crops_horizontally() -> None:
    img = _noise_image(100, 40)
    resized = img.resize((round(32 * 100 / 40), 32), Image.Resampling.LANCZOS)  # 80 x 32
    for u in (0.0, 0.5, 0.999):
        out = cover_crop(img, (32, 32), (u, 0.7))
        left = int(u * (80 - 32 + 1))
        assert out.size == (32, 32)
        assert np.array_equal(np.asarray(out), np.asarray(resized.crop((left, 0, left + 32, 32))))


def test_tall_source_matches_width_and_crops_vertically() -> None:
    img = _noise_image(40, 100)
    resized = img.resize((48, round(48 * 100 / 40)), Image.Resampling.LANCZOS)  # 48 x 120
    out = cover_crop(img, (48, 32), (0.3, 1.0 - 1e-9))
    assert np.array_equal(np.asarray(out), np.asarray(resized.crop((0, 120 - 32, 48, 120))))
    centre = cover_crop(img, (48, 32), None)
    top = (120 - 32) // 2
    assert np.array_equal(np.asarray(centre), np.asarray(resized.crop((0, top, 48, top + 32))))


def test_exact_size_is_untouched() -> None:
    img = _noise_image(48, 32)
    assert np.array_equal(np.asarray(cover_crop(img, (48, 32), (0.9, 0.9))), np.asarray(img))


def test_pixels_scale_and_flip() -> None:
    img = _noise_image(8, 4)
    x = to_pixels(img)
    ref = torch.from_numpy(np.asarray(img, dtype=np.float64)).permute(2, 0, 1) / 255 * 2 - 1
    assert x.dtype == torch.float32 and x.shape == (3, 4, 8)
    assert_close(x, ref)
    assert torch.equal(to_pixels(img, flip=True), x.flip(-1))


def test_flip_is_drawn_first() -> None:
    # The cached path draws only the flip: it must be the first draw of the sample's generator.
    flip, _, _ = augment_draws(random.Random(5), True)
    assert flip == (random.Random(5).random() < 0.5)
    assert augment_draws(random.Random(5), False)[0] is False
