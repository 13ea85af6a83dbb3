"""Map-style datasets indexed by `(epoch, index)`: decoded image pixels (on-the-fly encoding and the
cache writer) or cached posteriors and embeddings. Each sample's crop/flip draws come from its own
generator seeded by (seed, epoch, index), so DataLoader workers, ranks and resumes all agree."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from soar_fast.data.errors import DataError
from soar_fast.data.images import load_rgb
from soar_fast.data.records import Record
from soar_fast.data.sampler import aug_seed
from soar_fast.data.transform import augment_draws, cover_crop, to_pixels

Ref = tuple[int, int]  # (epoch, record index)


class PixelDataset(Dataset):
    """(epoch, i) → pixels [3, h, w] in [-1, 1] cropped to the record's bucket, caption, line, flip.
    `fixed_crop=True` (the cache) takes the centre crop and, with flips on, returns both orientations."""

    def __init__(self, records: list[Record], images: list[Path], *, seed: int = 0, random_flip: bool = False,
                 fixed_crop: bool = False) -> None:
        assert len(records) == len(images), f"{len(records)} records but {len(images)} image paths"
        self.records, self.images = records, images
        self.seed, self.random_flip, self.fixed_crop = seed, random_flip, fixed_crop

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, ref: Ref) -> dict[str, Any]:
        epoch, i = ref
        record, path = self.records[i], self.images[i]
        try:
            img = load_rgb(path)
        except (OSError, ValueError) as exc:
            # Checked readable before training: the file changed underneath the run.
            raise DataError(f"{path}: unreadable image (line {record.line}): {exc}") from None
        if self.fixed_crop:
            img = cover_crop(img, record.bucket, None)
            out = {"pixels": to_pixels(img)}
            if self.random_flip:
                out["pixels_flip"] = to_pixels(img, flip=True)
            flip = False
        else:
            # Seeded by the JSONL line, which names the sample in the cache too (row order differs there).
            flip, u_left, u_top = augment_draws(random.Random(aug_seed(self.seed, epoch, record.line)),
                                                self.random_flip)
            out = {"pixels": to_pixels(cover_crop(img, record.bucket, (u_left, u_top)), flip)}
        return out | {"caption": record.caption, "line": record.line, "bucket": record.bucket, "flip": flip,
                      "index": i, "epoch": epoch}


class CachedDataset(Dataset):
    """(epoch, i) → the cached posterior (flipped or not, drawn like `PixelDataset`) and embeddings."""

    def __init__(self, store: Any, *, seed: int = 0, random_flip: bool = False) -> None:
        if random_flip and not store.has_flips:
            raise DataError(f"{store.folder}: data.random_flip is on but this cache was written without flips "
                            "(rerun `soar-fast cache` with data.random_flip = true)")
        self.store, self.seed, self.random_flip = store, seed, random_flip

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, ref: Ref) -> dict[str, Any]:
        epoch, i = ref
        flip = augment_draws(random.Random(aug_seed(self.seed, epoch, self.store.lines[i])), self.random_flip)[0]
        return self.store.row(i, flip) | {"flip": flip, "index": i, "epoch": epoch}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list everything else."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
