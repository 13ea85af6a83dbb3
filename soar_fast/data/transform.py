"""The per-sample transform (docs/data.md, "Format"): resize to cover with Lanczos, crop along the long
axis, optional horizontal flip, scale to [-1, 1]."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def augment_draws(rng: random.Random, random_flip: bool) -> tuple[bool, float, float]:
    """(flip, crop_u_left, crop_u_top) for one sample. The flip is drawn first so the cached path
    (fixed crop, flip drawn per step) makes the same flip decisions as the on-the-fly path."""
    flip = random_flip and rng.random() < 0.5
    return flip, rng.random(), rng.random()


def cover_crop(img: Image.Image, size: tuple[int, int], crop_u: tuple[float, float] | None) -> Image.Image:
    """Resize so `img` covers `size` = (width, height), then crop to it. `crop_u` = (u_left, u_top)
    in [0, 1) picks the offset uniformly over the valid range; None = centre crop (the cache)."""
    tw, th = size
    w, h = img.size
    if h * tw < th * w:  # relatively wider than the target: match the height
        rw, rh = max(round(th * w / h), tw), th
    else:
        rw, rh = tw, max(round(tw * h / w), th)
    if (rw, rh) != (w, h):
        img = img.resize((rw, rh), Image.Resampling.LANCZOS)
    if crop_u is None:
        left, top = (rw - tw) // 2, (rh - th) // 2
    else:
        left, top = int(crop_u[0] * (rw - tw + 1)), int(crop_u[1] * (rh - th + 1))
    if (rw, rh) != (tw, th):
        img = img.crop((left, top, left + tw, top + th))
    return img


def to_pixels(img: Image.Image, flip: bool = False) -> torch.Tensor:
    """[3, H, W] float32 in [-1, 1] (ToTensor then Normalize(0.5, 0.5), the same float ops)."""
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return x.to(torch.float32).div(255).sub(0.5).div(0.5)
