"""`build_source`, the data side's one entry point: demo set, cache, or JSONL encoded on the fly.

Each function takes the config sections it reads (`DataConfig`, `ModelConfig`) and the seed, not
the whole `Config`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from soar_fast.config import DataConfig, ModelConfig
from soar_fast.data.bucket_source import BucketSource
from soar_fast.data.cache_store import CacheStore
from soar_fast.data.datasets import CachedDataset, PixelDataset
from soar_fast.data.demo import write_demo_set
from soar_fast.data.errors import DataError
from soar_fast.data.model_dims import encoder_identity, size_multiple
from soar_fast.data.report import build_report, write_report
from soar_fast.data.sampler import BucketSampler
from soar_fast.data.scan import ScanResult, scan
from soar_fast.data.source import SourceInfo, TrainSource

log = logging.getLogger(__name__)


def _sampler(batch_size: int, seed: int, buckets: dict, rank: int, world: int, where: str) -> BucketSampler:
    sampler = BucketSampler(buckets, batch_size, rank=rank, world=world, seed=seed)
    if sampler.steps_per_epoch == 0:
        sizes = ", ".join(f"{w}x{h}: {len(ix)}" for (w, h), ix in sorted(buckets.items())) or "no samples"
        raise DataError(f"{where}: no bucket holds data.batch_size × world = {batch_size * world} "
                        f"samples ({sizes})")
    return sampler


def _buckets(records) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        out.setdefault(r.bucket, []).append(i)
    return out


def scan_data(data: DataConfig, model: ModelConfig, *, seed: int, output_dir: str | Path,
              progress: bool = True) -> ScanResult:
    """The configured JSONL (or the demo set, generated first) scanned under `data.on_bad_sample`."""
    if data.jsonl is None:
        jsonl = write_demo_set(Path(output_dir) / "demo-data", size=data.demo_size, resolution=model.resolution,
                               seed=seed, multiple=size_multiple(model))
        return scan(jsonl, jsonl.parent, policy="error", size_multiple=size_multiple(model), progress=False)
    return scan(data.jsonl, data.image_dir, policy=data.on_bad_sample, size_multiple=size_multiple(model),
                workers=data.num_workers, progress=progress)


def report_of(data: DataConfig, result: ScanResult, world: int) -> dict:
    return build_report(jsonl=result.jsonl, total=result.total, records=result.records, skipped=result.skipped,
                        batch_size=data.batch_size, world=world)


def _publish(report: dict, output_dir: Path) -> None:
    """Rank 0: write data_report.json and say in the log what was left out."""
    path = write_report(report, output_dir)
    if report["skipped"]:
        log.warning("data: %d of %d lines skipped (first: line %d, %s); see %s", len(report["skipped"]),
                    report["total"], report["skipped"][0]["line"], report["skipped"][0]["reason"], path)
    for b in report["small_buckets"]:
        log.warning("data: bucket %s has %d samples, fewer than one batch on every rank (%d): never trained",
                    b["bucket"], b["count"], b["needed"])


def _check_encoders(data: DataConfig, model: ModelConfig, store: CacheStore, folder: Path) -> None:
    """The cache must come from the encoders this config names. A moved model folder is fine, and
    so is one whose encoders were deleted after caching (nothing left to compare them with)."""
    cached = dict(store.index["fingerprint"]["encoders"])
    now = encoder_identity(model, data)
    ignore = {"path"}
    if model.path and not (Path(model.path) / "text_encoder").is_dir():
        ignore.add("digest")
    differ = sorted(k for k in set(cached) | set(now) if k not in ignore and cached.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: cache {cached.get(k)!r}, config {now.get(k)!r}" for k in differ)
        raise DataError(f"{folder}: cache written with other encoders or settings ({detail}); "
                        "rerun `soar-fast cache` into a new folder")


def cached_source(data: DataConfig, model: ModelConfig, folder: Path, *, seed: int, rank: int, world: int,
                  device: torch.device, dtype: torch.dtype, output_dir: Path, kind: str = "cache") -> BucketSource:
    store = CacheStore(folder)
    _check_encoders(data, model, store, folder)
    report = dict(store.index["report"])
    if rank == 0:
        need = data.batch_size * world
        report["small_buckets"] = [{"bucket": f"{w}x{h}", "count": len(ix), "needed": need}
                                   for (w, h), ix in sorted(store.buckets.items()) if len(ix) < need]
        _publish(report, output_dir)
    sampler = _sampler(data.batch_size, seed, store.buckets, rank, world, str(folder))
    info = SourceInfo(kind=kind, jsonl=report.get("jsonl"), cache=str(folder), total=report["total"],
                      kept=len(store), buckets=report["buckets"])
    return BucketSource(CachedDataset(store, seed=seed, random_flip=data.random_flip), sampler,
                        null_embeds=store.null_embeds, null_pooled=store.null_pooled,
                        latent_channels=store.latent_channels, device=device, dtype=dtype,
                        num_workers=data.num_workers, info=info)


def ensure_cache(data: DataConfig, model: ModelConfig, result: ScanResult, folder: Path, *, world: int,
                 device: torch.device) -> None:
    """Encode the demo set once into its own cache. Every rank writes any missing shard itself:
    the bytes are identical and each file is replaced atomically, so no coordination is needed."""
    from soar_fast.data.cache_writer import cache_complete, cache_fingerprint, write_cache

    fingerprint = cache_fingerprint(result, encoder_identity(model, data), data.random_flip,
                                    data.cache_shard_size)
    if cache_complete(folder, fingerprint):
        return
    from soar_fast.data.encoders import load_encoders  # seconds of imports: only when encoding

    encoders = load_encoders(model, data, device if model.path else "cpu")
    write_cache(folder, result, encoders, report=report_of(data, result, world), random_flip=data.random_flip,
                shard_size=data.cache_shard_size, batch_size=data.encode_batch_size, replace_stale=True,
                progress=False)


def build_source(data: DataConfig, model: ModelConfig, *, seed: int, output_dir: str | Path, rank: int = 0,
                 world: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> TrainSource:
    """The training data for process `rank` of `world`, batches on `device`.

    - `data.cache` set: read the cache written by `soar-fast cache`; no encoder is ever built.
    - `data.jsonl` set: scan it (bad inputs per `data.on_bad_sample`, report in
      `<output_dir>/data_report.json`) and encode each batch with the encoders of `model.path`
      (tiny ones matching the preset when no path is set).
    - neither: generate the demo set under `<output_dir>/demo-data/`, cache it there once, train from
      that cache.
    `seed` (`train.seed`) orders the data and the flips; `dtype` is the dtype of the embeddings handed
    out (latents are always float32). Raises `soar_fast.data.errors.DataError` (one line, naming
    file:line or the image) on bad input.
    """
    device, output_dir = torch.device(device), Path(output_dir)
    if data.cache:
        return cached_source(data, model, Path(data.cache), seed=seed, rank=rank, world=world, device=device,
                             dtype=dtype, output_dir=output_dir)
    result = scan_data(data, model, seed=seed, output_dir=output_dir, progress=rank == 0)
    if data.jsonl is None:
        folder = result.jsonl.parent / "cache"
        ensure_cache(data, model, result, folder, world=world, device=device)
        return cached_source(data, model, folder, seed=seed, rank=rank, world=world, device=device, dtype=dtype,
                             output_dir=output_dir, kind="demo")
    report = report_of(data, result, world)
    if rank == 0:
        _publish(report, output_dir)
    sampler = _sampler(data.batch_size, seed, _buckets(result.records), rank, world, str(result.jsonl))
    from soar_fast.data.encoders import load_encoders

    encoders = load_encoders(model, data, device)
    null_embeds, null_pooled = encoders.encode_text([""])
    info = SourceInfo(kind="on-the-fly", jsonl=str(result.jsonl), total=result.total, kept=len(result.records),
                      buckets=report["buckets"])
    dataset = PixelDataset(result.records, result.images, seed=seed, random_flip=data.random_flip)
    return BucketSource(dataset, sampler, null_embeds=null_embeds, null_pooled=null_pooled,
                        latent_channels=encoders.latent_channels, device=device, dtype=dtype,
                        num_workers=data.num_workers, encoders=encoders, info=info)
