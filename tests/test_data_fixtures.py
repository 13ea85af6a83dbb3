"""Generated reference-format data sets for the data tests (helpers, plus a check of the helpers).

`write_acceptance_set` is the bad-input acceptance set: 18 lines = 16 image rows in two buckets (one
JPEG truncated), one row whose image is missing, one malformed line at line 4; one good row has a
JSON-object caption.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image

BUCKETS = ((32, 32), (48, 32))
MALFORMED_LINE = 4


def _image(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(4):  # a few blocks so crops and flips change pixels
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x0, y0, x0 + size[0] // 3, y0 + size[1] // 3))
    return img


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_acceptance_set(folder: Path, *, exact: bool = False, seed: int = 0) -> dict:
    """Write `data.jsonl` + images into `folder`. `exact=True` makes every image exactly its bucket's
    size (no resize, no crop freedom); otherwise sizes vary so resize and crop do work. Returns the
    expected facts: bad lines with a reason keyword, JSON-caption line and its parsed caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines: list[str] = []
    expected = {"truncated": None, "missing": None, "malformed": MALFORMED_LINE, "json_caption": None}
    image_rows = 0
    while len(lines) < 18:
        line_no = len(lines) + 1
        if line_no == MALFORMED_LINE:
            lines.append('{"md5": "broken", "caption_en": "a cat", "bw": 32, ')
            continue
        if line_no == 9:
            expected["missing"] = line_no
            lines.append(json.dumps({"md5": "f" * 32, "caption_en": "a missing image", "bw": 32, "bh": 32}))
            continue
        bucket = BUCKETS[image_rows % 2]
        image_rows += 1
        size = bucket if exact else (bucket[0] + rng.choice((0, 8, 24)), bucket[1] + rng.choice((0, 4, 16)))
        data = _jpeg(_image(rng, size))
        md5 = f"{line_no:02d}" + "a" * 30
        caption: object = f"a red square number {line_no}"
        if line_no == 6:
            expected["json_caption"] = (line_no, "a long caption about a blue circle")
            caption = json.dumps({"short_caption": "blue circle", "long_caption": "a long caption about a blue circle"})
        if line_no == 12:
            expected["truncated"] = line_no
            data = data[: len(data) // 2]
        (folder / f"{md5}.jpg").write_bytes(data)
        lines.append(json.dumps({"md5": md5, "caption_en": caption, "bw": bucket[0], "bh": bucket[1]}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return expected


def write_clean_set(folder: Path, *, per_bucket: int = 8, seed: int = 1, exact: bool = True) -> Path:
    """Only good rows: `per_bucket` images in each of BUCKETS."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i in range(per_bucket * len(BUCKETS)):
        bucket = BUCKETS[i % len(BUCKETS)]
        size = bucket if exact else (bucket[0] + 8, bucket[1] + 16)
        md5 = f"{i:04d}" + "c" * 28
        (folder / f"{md5}.jpg").write_bytes(_jpeg(_image(rng, size)))
        lines.append(json.dumps({"md5": md5, "caption_en": f"a green circle {i}", "bw": bucket[0], "bh": bucket[1]}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def test_acceptance_set_shape(tmp_path: Path) -> None:
    facts = write_acceptance_set(tmp_path)
    lines = (tmp_path / "data.jsonl").read_text().splitlines()
    assert len(lines) == 18
    assert len(list(tmp_path.glob("*.jpg"))) == 16
    assert facts["malformed"] == 4 and facts["missing"] == 9 and facts["truncated"] == 12
