"""The on-disk cache: `index.json` (plan, fingerprint, data report), `null.safetensors` (the
empty-prompt embedding) and one `shard-NNNNN-WxH.safetensors` per ≤ `cache_shard_size` samples of
one bucket, holding

    latent_mean, latent_std            [n, C, h, w] float32 (centre crop; `_flip` twins with flips on)
    prompt_embeds [n, L, D], pooled [n, P]  (encoder dtype)
    line                               [n] int64 (JSONL line of each row)

Shards are written atomically (temp file + rename), so a shard file that exists is complete: that
is what makes `soar-fast cache` resumable and splittable (shard i belongs to process i mod world).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from soar_fast.data.errors import DataError
from soar_fast.data.records import Record
from soar_fast.data.report import bucket_name

FORMAT = "soar-fast-cache/1"
INDEX, NULL = "index.json", "null.safetensors"


@dataclass(frozen=True)
class ShardPlan:
    file: str
    bucket: tuple[int, int]
    indices: tuple[int, ...]   # into the kept records


def plan_shards(records: list[Record], shard_size: int) -> list[ShardPlan]:
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, r in enumerate(records):
        by_bucket.setdefault(r.bucket, []).append(i)
    plans = []
    for bucket, ix in sorted(by_bucket.items()):
        for start in range(0, len(ix), shard_size):
            plans.append(ShardPlan(f"shard-{len(plans):05d}-{bucket_name(bucket)}.safetensors", bucket,
                                   tuple(ix[start:start + shard_size])))
    return plans


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def make_index(*, fingerprint: dict[str, Any], records: list[Record], plans: list[ShardPlan],
               report: dict[str, Any], flips: bool, dims: dict[str, int]) -> dict[str, Any]:
    return {
        "format": FORMAT, "fingerprint": fingerprint, "flips": flips, **dims, "report": report,
        "shards": [{"file": p.file, "bucket": list(p.bucket), "lines": [records[i].line for i in p.indices],
                    "md5": [records[i].md5 for i in p.indices]} for p in plans],
    }


def read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: unreadable cache index ({exc})") from None
    if index.get("format") != FORMAT:
        raise DataError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


class CacheStore:
    """Read side of a complete cache. Safetensors files are opened lazily per process (DataLoader
    workers each get their own handles) and read row by row through memory maps."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = read_index(self.folder)
        if index is None:
            raise DataError(f"{self.folder}: no {INDEX} here; write the cache first with `soar-fast cache`")
        missing = [s["file"] for s in index["shards"] if not (self.folder / s["file"]).is_file()]
        if missing or not (self.folder / NULL).is_file():
            raise DataError(f"{self.folder}: cache incomplete, {len(missing)} of {len(index['shards'])} shards "
                            f"missing (first: {missing[0] if missing else NULL}); rerun `soar-fast cache`")
        self.index = index
        self.has_flips = bool(index["flips"])
        self.latent_channels = int(index["latent_channels"])
        self.embed_dim, self.pooled_dim = int(index["embed_dim"]), int(index["pooled_dim"])
        self.text_length = int(index["text_length"])
        self.rows: list[tuple[int, int]] = []
        self.row_buckets: list[tuple[int, int]] = []
        self.lines: list[int] = []
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for s, shard in enumerate(index["shards"]):
            for r, line in enumerate(shard["lines"]):
                self.buckets.setdefault(tuple(shard["bucket"]), []).append(len(self.rows))
                self.rows.append((s, r))
                self.row_buckets.append(tuple(shard["bucket"]))
                self.lines.append(line)
        with safe_open(str(self.folder / NULL), framework="pt") as f:
            self.null_embeds, self.null_pooled = f.get_tensor("prompt_embeds"), f.get_tensor("pooled")
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_handles": {}}

    def _shard(self, s: int) -> Any:
        if s not in self._handles:
            self._handles[s] = safe_open(str(self.folder / self.index["shards"][s]["file"]), framework="pt")
        return self._handles[s]

    def row(self, i: int, flip: bool = False) -> dict[str, Any]:
        s, r = self.rows[i]
        f = self._shard(s)
        suffix = "_flip" if flip else ""
        return {"latent_mean": f.get_slice(f"latent_mean{suffix}")[r],
                "latent_std": f.get_slice(f"latent_std{suffix}")[r],
                "prompt_embeds": f.get_slice("prompt_embeds")[r], "pooled": f.get_slice("pooled")[r],
                "line": self.lines[i], "bucket": self.row_buckets[i]}
