"""Writing the cache (format in `cache_store.py`): encode every kept sample once — text embeddings
and the VAE posterior of the centre crop (and of its mirror image when flips are on)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from soar_fast.data.cache_store import (
    INDEX,
    NULL,
    atomic_save,
    atomic_write_bytes,
    file_digest,
    make_index,
    plan_shards,
    read_index,
)
from soar_fast.data.datasets import PixelDataset, collate
from soar_fast.data.errors import DataError
from soar_fast.data.scan import ScanResult

if TYPE_CHECKING:
    from soar_fast.data.encoders import Encoders


@dataclass
class CacheStats:
    shards: int          # planned in total
    written: int         # written by this process now
    skipped_done: int    # already complete (resume)
    samples: int         # encoded by this process now
    seconds: float

    def line(self) -> str:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return (f"cache: {self.written} shards written ({self.samples} samples, {rate:.1f} samples/s), "
                f"{self.skipped_done} already done, {self.shards} in total")


def cache_fingerprint(scan: ScanResult, identity: dict[str, Any], flips: bool, shard_size: int) -> dict[str, Any]:
    """Everything the cached tensors depend on (the kept lines come from the JSONL digest)."""
    return {"jsonl": str(scan.jsonl.resolve()), "jsonl_sha256": file_digest(scan.jsonl),
            "image_dir": str(scan.image_dir.resolve()), "encoders": identity, "flips": flips,
            "shard_size": shard_size, "crop": "centre"}


def cache_complete(folder: str | Path, fingerprint: dict[str, Any]) -> bool:
    """A finished cache of exactly this data and these encoders is in `folder`."""
    folder = Path(folder)
    index = read_index(folder) if (folder / INDEX).is_file() else None
    return (index is not None and index["fingerprint"] == fingerprint and (folder / NULL).is_file()
            and all((folder / s["file"]).is_file() for s in index["shards"]))


def write_cache(folder: str | Path, scan: ScanResult, encoders: Encoders, *, report: dict[str, Any],
                random_flip: bool = False, shard_size: int = 256, batch_size: int = 16, workers: int = 0,
                rank: int = 0, world: int = 1, replace_stale: bool = False, progress: bool = True) -> CacheStats:
    """Write this process's missing shards of the cache of `scan` into `folder`.

    A folder holding a cache of other data or encoders is an error (`replace_stale=True`, used for the
    demo's own cache, empties it instead)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plans = plan_shards(scan.records, shard_size)
    fingerprint = cache_fingerprint(scan, encoders.identity, random_flip, shard_size)
    old = read_index(folder)
    if old is not None and old["fingerprint"] != fingerprint:
        if not replace_stale:
            changed = sorted(k for k in fingerprint if old["fingerprint"].get(k) != fingerprint[k])
            raise DataError(f"{folder / INDEX}: this cache was written for different {', '.join(changed)}; "
                            "point data.cache at a new folder or delete this one")
        shutil.rmtree(folder)
        folder.mkdir(parents=True)

    device = encoders.text.device
    null_embeds, null_pooled = encoders.encode_text([""])
    dims = {"latent_channels": encoders.latent_channels, "embed_dim": int(null_embeds.shape[-1]),
            "pooled_dim": int(null_pooled.shape[-1]), "text_length": int(null_embeds.shape[1])}
    index = make_index(fingerprint=fingerprint, records=scan.records, plans=plans, report=report,
                       flips=random_flip, dims=dims)
    # Every process writes the same bytes: no coordination needed.
    atomic_write_bytes(folder / INDEX, (json.dumps(index, indent=1) + "\n").encode())
    if not (folder / NULL).is_file():
        atomic_save({"prompt_embeds": null_embeds.cpu(), "pooled": null_pooled.cpu()}, folder / NULL)

    mine = [p for s, p in enumerate(plans) if s % world == rank]
    todo = [p for p in mine if not (folder / p.file).is_file()]
    dataset = PixelDataset(scan.records, scan.images, random_flip=random_flip, fixed_crop=True)
    start, samples = time.perf_counter(), 0
    bar = tqdm(total=sum(len(p.indices) for p in todo), desc=f"caching (rank {rank}/{world})", unit="img",
               disable=not progress)
    for plan in todo:
        refs = [(0, i) for i in plan.indices]
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                            sampler=refs)
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in loader:
            mean, std = encoders.encode_pixels(batch["pixels"].to(device))
            embeds, pooled = encoders.encode_text(batch["caption"])
            rows = {"latent_mean": mean, "latent_std": std, "prompt_embeds": embeds, "pooled": pooled}
            if random_flip:
                rows["latent_mean_flip"], rows["latent_std_flip"] = encoders.encode_pixels(
                    batch["pixels_flip"].to(device))
            for key, value in rows.items():
                parts.setdefault(key, []).append(value.cpu())
            bar.update(len(batch["line"]))
        tensors = {k: torch.cat(v) for k, v in parts.items()}
        tensors["line"] = torch.tensor([scan.records[i].line for i in plan.indices], dtype=torch.int64)
        atomic_save(tensors, folder / plan.file)
        samples += len(plan.indices)
    bar.close()
    return CacheStats(len(plans), len(todo), len(mine) - len(todo), samples, time.perf_counter() - start)
