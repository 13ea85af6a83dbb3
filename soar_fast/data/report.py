"""`<output_dir>/data_report.json` and its one-screen summary."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from soar_fast.data.records import Record, Skipped


def bucket_name(bucket: tuple[int, int]) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def build_report(*, jsonl: str | Path | None, total: int, records: list[Record], skipped: list[Skipped],
                 batch_size: int, world: int = 1) -> dict[str, Any]:
    """`total`, `kept`, `skipped` [{line, md5, reason}], `buckets` {"WxH": count}, and
    `small_buckets`: buckets with fewer than batch_size × world samples, which never train."""
    counts = Counter(bucket_name(r.bucket) for r in records)
    need = batch_size * world
    return {
        "jsonl": str(jsonl) if jsonl else None,
        "total": total,
        "kept": len(records),
        "skipped": [{"line": s.line, "md5": s.md5, "reason": s.reason} for s in skipped],
        "buckets": dict(sorted(counts.items())),
        "small_buckets": [{"bucket": b, "count": n, "needed": need} for b, n in sorted(counts.items()) if n < need],
    }


def write_report(report: dict[str, Any], output_dir: str | Path) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "data_report.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def summary(report: dict[str, Any]) -> str:
    head = f"{report['jsonl']}: {report['total']} lines, {report['kept']} kept, {len(report['skipped'])} skipped"
    lines = [head]
    for s in report["skipped"]:
        lines.append(f"  skipped line {s['line']} (md5 {s['md5']}): {s['reason']}")
    lines.append("buckets: " + (", ".join(f"{b}: {n}" for b, n in report["buckets"].items()) or "none"))
    for b in report["small_buckets"]:
        lines.append(f"  bucket {b['bucket']} has {b['count']} samples, fewer than one batch on every rank "
                     f"({b['needed']}): it is never trained")
    return "\n".join(lines)
