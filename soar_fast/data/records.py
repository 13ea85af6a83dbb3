"""Reading the reference JSONL (docs/data.md, "Format"): one `Record` per usable line, a `Skipped`
entry for every line that is not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

_CAPTION_KEYS = ("long_caption", "medium_caption", "short_caption", "text")


@dataclass(frozen=True)
class Record:
    """One usable line. `line` is 1-based; (width, height) is the bucket the image is cropped to."""

    line: int
    md5: str
    caption: str
    width: int
    height: int

    @property
    def bucket(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass(frozen=True)
class Skipped:
    """A line left out of training. `fatal` is False for lines the reference drops by design
    (empty `caption_en`): they are reported but never stop an `on_bad_sample = "error"` run."""

    line: int
    md5: str | None
    reason: str
    fatal: bool = True


def parse_caption(raw: object) -> str:
    """The reference's `_parse_caption`: stringify and strip; "nan"/"None"/"" → ""; a JSON object
    gives its first non-empty long/medium/short caption or text; anything unparsable stays raw."""
    text = str(raw).strip()
    if text in ("", "nan", "None"):
        return ""
    if text.startswith("{"):
        try:
            obj = json.loads(text.strip())
        except ValueError:
            return text
        if isinstance(obj, dict):
            for key in _CAPTION_KEYS:
                value = obj.get(key)
                if value and str(value).strip():
                    return str(value).strip()
    return text


def _size(obj: dict, key: str, multiple: int) -> int:
    value = obj[key]
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None or not number.is_integer():
        raise ValueError(f"{key}={value!r} is not an integer")
    size = int(number)
    if size <= 0 or size % multiple:
        raise ValueError(f"{key}={size} must be a positive multiple of {multiple}")
    return size


def parse_line(text: str, line: int, size_multiple: int) -> Record | Skipped:
    """One JSONL line → Record, or Skipped with the reason."""
    try:
        obj = json.loads(text.strip())
    except ValueError as exc:
        return Skipped(line, None, f"malformed JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(obj, dict):
        return Skipped(line, None, f"expected a JSON object, got {type(obj).__name__}")
    md5 = obj.get("md5")
    if not isinstance(md5, str) or not md5.strip():
        return Skipped(line, None, "missing or empty key 'md5'")
    md5 = md5.strip()
    if "/" in md5 or "\\" in md5 or md5.startswith("."):
        return Skipped(line, md5, f"md5 {md5!r} is not a plain file stem")
    missing = [k for k in ("bw", "bh") if k not in obj]
    if missing:
        return Skipped(line, md5, f"missing key {missing[0]!r}")
    try:
        width, height = _size(obj, "bw", size_multiple), _size(obj, "bh", size_multiple)
    except ValueError as exc:
        return Skipped(line, md5, str(exc))
    raw = obj.get("caption_en")
    if not raw:
        return Skipped(line, md5, "empty caption_en (dropped, as the reference does)", fatal=False)
    return Record(line, md5, parse_caption(raw), width, height)


def read_jsonl(path: str | Path, size_multiple: int = 16) -> tuple[int, list[Record], list[Skipped]]:
    """(total non-blank lines, records, skipped) of a reference JSONL file."""
    records: list[Record] = []
    skipped: list[Skipped] = []
    total = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            total += 1
            item = parse_line(text, line_no, size_multiple)
            (records if isinstance(item, Record) else skipped).append(item)
    return total, records, skipped
