"""PNG output (uint8 by rounding; the reference truncated to JPEG) written off the main thread, and
contact-sheet grids."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) float [0,1] -> (B,H,W,3) uint8 numpy (one device-to-host copy)."""
    return (images.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def contact_sheet(images: Sequence[np.ndarray], columns: int | None = None, pad: int = 2) -> Image.Image:
    """Images (H,W,3) uint8, all the same size, in a near-square grid (row-major) with `pad` px gaps."""
    if not images:
        raise ValueError("contact_sheet: no images")
    h, w = images[0].shape[:2]
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return Image.fromarray(sheet)


class ImageWriter:
    """Saves PNGs on background threads so PNG encoding overlaps the next batch; `close()` waits and
    re-raises the first write error."""

    def __init__(self, workers: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: list[Future] = []

    def save(self, array: np.ndarray, path: str) -> None:
        self.pending.append(self.pool.submit(_save, array, path))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for f in self.pending:
            f.result()
        self.pending.clear()


def _save(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.png"
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
