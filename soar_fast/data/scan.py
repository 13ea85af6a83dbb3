"""Finding every bad input before training: malformed or incomplete JSONL lines first, then missing,
truncated or undecodable images. Policy `skip` drops and lists them; `error` stops at the first one
with a one-line message naming `file:line` (and the image path for image problems)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from soar_fast.data.errors import DataError
from soar_fast.data.images import image_problem
from soar_fast.data.records import Record, Skipped, read_jsonl


@dataclass
class ScanResult:
    jsonl: Path
    image_dir: Path
    total: int                       # non-blank JSONL lines
    records: list[Record]            # kept, in line order
    images: list[Path]               # image file of each kept record
    skipped: list[Skipped] = field(default_factory=list)


def _fail(jsonl: Path, item: Skipped) -> DataError:
    return DataError(f"{jsonl}:{item.line}: {item.reason}")


def scan(jsonl: str | Path, image_dir: str | Path | None = None, *, policy: str = "skip", size_multiple: int = 16,
         workers: int = 0, progress: bool = True) -> ScanResult:
    """Read `jsonl` and decode every image it names once (decoding is what finds truncated files)."""
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise DataError(f"{jsonl}: data.jsonl " + ("is a directory, not a JSONL file" if jsonl.is_dir() else "not found"))
    image_dir = Path(image_dir) if image_dir else jsonl.parent
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: data.image_dir is not a folder")
    total, records, skipped = read_jsonl(jsonl, size_multiple)
    if policy == "error":
        fatal = [s for s in skipped if s.fatal]
        if fatal:
            raise _fail(jsonl, fatal[0])

    threads = max(1, workers or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:  # PIL decodes with the GIL released
        results = pool.map(lambda r: image_problem(image_dir, r.md5), records)
        checked = list(tqdm(results, total=len(records), desc="checking images", unit="img",
                            disable=not progress, leave=False))
    kept, images = [], []
    for record, (path, reason) in zip(records, checked):
        if reason is None:
            kept.append(record)
            images.append(path)
            continue
        item = Skipped(record.line, record.md5, reason)
        if policy == "error":
            raise _fail(jsonl, item)
        skipped.append(item)
    skipped.sort(key=lambda s: s.line)
    return ScanResult(jsonl, image_dir, total, kept, images, skipped)
