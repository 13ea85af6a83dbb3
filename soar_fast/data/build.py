"""`build_source` (see `source.py`): demo set, cache, or JSONL encoded on the fly."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from soar_fast.config import Config
from soar_fast.data.bucket_source import BucketSource
from soar_fast.data.cache_store import CacheStore
from soar_fast.data.datasets import CachedDataset, PixelDataset
from soar_fast.data.demo import write_demo_set
from soar_fast.data.errors import DataError
from soar_fast.data.model_dims import encoder_identity, size_multiple
from soar_fast.data.report import build_report, write_report
from soar_fast.data.sampler import BucketSampler
from soar_fast.data.scan import ScanResult, scan
from soar_fast.data.source import SourceInfo

log = logging.getLogger(__name__)


def _sampler(cfg: Config, buckets: dict, rank: int, world: int, where: str) -> BucketSampler:
    sampler = BucketSampler(buckets, cfg.data.batch_size, rank=rank, world=world, seed=cfg.train.seed)
    if sampler.steps_per_epoch == 0:
        sizes = ", ".join(f"{w}x{h}: {len(ix)}" for (w, h), ix in sorted(buckets.items())) or "no samples"
        raise DataError(f"{where}: no bucket holds data.batch_size × world = {cfg.data.batch_size * world} "
                        f"samples ({sizes})")
    return sampler


def _buckets(records) -> dict[tuple[int, int], list[int]]:
    out: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        out.setdefault(r.bucket, []).append(i)
    return out


def scan_data(cfg: Config, output_dir: Path, *, progress: bool = True) -> ScanResult:
    """The configured JSONL (or the demo set, generated first) scanned under `data.on_bad_sample`."""
    if cfg.data.jsonl is None:
        jsonl = write_demo_set(output_dir / "demo-data", size=cfg.data.demo_size, resolution=cfg.model.resolution,
                               seed=cfg.train.seed)
        return scan(jsonl, jsonl.parent, policy="error", size_multiple=size_multiple(cfg.model), progress=False)
    return scan(cfg.data.jsonl, cfg.data.image_dir, policy=cfg.data.on_bad_sample,
                size_multiple=size_multiple(cfg.model), workers=cfg.data.num_workers, progress=progress)


def report_of(cfg: Config, result: ScanResult, world: int) -> dict:
    return build_report(jsonl=result.jsonl, total=result.total, records=result.records, skipped=result.skipped,
                        batch_size=cfg.data.batch_size, world=world)


def _publish(report: dict, output_dir: Path) -> None:
    """Rank 0: write data_report.json and say in the log what was left out."""
    path = write_report(report, output_dir)
    if report["skipped"]:
        log.warning("data: %d of %d lines skipped (first: line %d, %s); see %s", len(report["skipped"]),
                    report["total"], report["skipped"][0]["line"], report["skipped"][0]["reason"], path)
    for b in report["small_buckets"]:
        log.warning("data: bucket %s has %d samples, fewer than one batch on every rank (%d): never trained",
                    b["bucket"], b["count"], b["needed"])


def _check_encoders(cfg: Config, store: CacheStore, folder: Path) -> None:
    """The cache must come from the encoders this config names. A moved model folder is fine, and
    so is one whose encoders were deleted after caching (nothing left to compare them with)."""
    cached = dict(store.index["fingerprint"]["encoders"])
    now = encoder_identity(cfg.model, cfg.data)
    ignore = {"path"}
    if cfg.model.path and not (Path(cfg.model.path) / "text_encoder").is_dir():
        ignore.add("digest")
    differ = sorted(k for k in set(cached) | set(now) if k not in ignore and cached.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: cache {cached.get(k)!r}, config {now.get(k)!r}" for k in differ)
        raise DataError(f"{folder}: cache written with other encoders or settings ({detail}); "
                        "rerun `soar-fast cache` into a new folder")


def cached_source(cfg: Config, folder: Path, *, rank: int, world: int, device: torch.device,
                  dtype: torch.dtype, output_dir: Path, kind: str = "cache") -> BucketSource:
    store = CacheStore(folder)
    _check_encoders(cfg, store, folder)
    report = dict(store.index["report"])
    if rank == 0:
        need = cfg.data.batch_size * world
        report["small_buckets"] = [{"bucket": f"{w}x{h}", "count": len(ix), "needed": need}
                                   for (w, h), ix in sorted(store.buckets.items()) if len(ix) < need]
        _publish(report, output_dir)
    sampler = _sampler(cfg, store.buckets, rank, world, str(folder))
    info = SourceInfo(kind=kind, jsonl=report.get("jsonl"), cache=str(folder), total=report["total"],
                      kept=len(store), buckets=report["buckets"])
    return BucketSource(CachedDataset(store, seed=cfg.train.seed, random_flip=cfg.data.random_flip), sampler,
                        null_embeds=store.null_embeds, null_pooled=store.null_pooled,
                        latent_channels=store.latent_channels, device=device, dtype=dtype,
                        num_workers=cfg.data.num_workers, info=info)


def ensure_cache(cfg: Config, result: ScanResult, folder: Path, *, world: int, device: torch.device) -> None:
    """Encode the demo set once into its own cache. Every rank writes any missing shard itself:
    the bytes are identical and each file is replaced atomically, so no coordination is needed."""
    from soar_fast.data.cache_writer import cache_complete, cache_fingerprint, write_cache

    data = cfg.data
    fingerprint = cache_fingerprint(result, encoder_identity(cfg.model, data), data.random_flip,
                                    data.cache_shard_size)
    if cache_complete(folder, fingerprint):
        return
    from soar_fast.data.encoders import load_encoders  # seconds of imports: only when encoding

    encoders = load_encoders(cfg.model, data, device if cfg.model.path else "cpu")
    write_cache(folder, result, encoders, report=report_of(cfg, result, world), random_flip=data.random_flip,
                shard_size=data.cache_shard_size, batch_size=data.encode_batch_size, replace_stale=True,
                progress=False)


def build_source(cfg: Config, *, rank: int, world: int, device: torch.device, dtype: torch.dtype,
                 output_dir: Path) -> BucketSource:
    data = cfg.data
    if data.cache:
        return cached_source(cfg, Path(data.cache), rank=rank, world=world, device=device, dtype=dtype,
                             output_dir=output_dir)
    result = scan_data(cfg, output_dir, progress=rank == 0)
    if data.jsonl is None:
        folder = result.jsonl.parent / "cache"
        ensure_cache(cfg, result, folder, world=world, device=device)
        return cached_source(cfg, folder, rank=rank, world=world, device=device, dtype=dtype,
                             output_dir=output_dir, kind="demo")
    report = report_of(cfg, result, world)
    if rank == 0:
        _publish(report, output_dir)
    sampler = _sampler(cfg, _buckets(result.records), rank, world, str(result.jsonl))
    from soar_fast.data.encoders import load_encoders

    encoders = load_encoders(cfg.model, data, device)
    null_embeds, null_pooled = encoders.encode_text([""])
    info = SourceInfo(kind="on-the-fly", jsonl=str(result.jsonl), total=result.total, kept=len(result.records),
                      buckets=report["buckets"])
    dataset = PixelDataset(result.records, result.images, seed=cfg.train.seed, random_flip=data.random_flip)
    return BucketSource(dataset, sampler, null_embeds=null_embeds, null_pooled=null_pooled,
                        latent_channels=encoders.latent_channels, device=device, dtype=dtype,
                        num_workers=data.num_workers, encoders=encoders, info=info)
