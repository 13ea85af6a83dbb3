"""The embedded demo data set: coloured shapes on coloured backgrounds with matching captions
("a red circle on a blue background"), generated from the seed and written in the reference format
(`data.jsonl` + `<md5>.jpg`), so the demo runs the same reading path as user data."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from soar_fast.config_rules import DEMO_WIDEST_ASPECT

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")


def demo_buckets(resolution: int) -> list[tuple[int, int]]:
    """A square bucket at `resolution` and a 5:3 landscape one, both multiples of 16."""
    side = max(16, resolution // 16 * 16)
    wide = (max(16, round(side * DEMO_WIDEST_ASPECT / 16) * 16), max(16, round(side * 0.75 / 16) * 16))
    return [(side, side), wide]


def _draw(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    fg_name, bg_name = rng.sample(sorted(COLOURS), 2)
    shape = rng.choice(SHAPES)
    w, h = size
    img = Image.new("RGB", size, COLOURS[bg_name])
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.4) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    fg = COLOURS[fg_name]
    if shape == "circle":
        d.ellipse(box, fill=fg)
    elif shape == "square":
        d.rectangle(box, fill=fg)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    elif shape == "ring":
        d.ellipse(box, outline=fg, width=max(2, int(r / 3)))
    else:
        t = r / 3
        d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fg)
        d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fg)
    return img, f"a {fg_name} {shape} on a {bg_name} background"


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomic and idempotent, so several ranks may generate the same set at once."""
    if path.is_file() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_demo_set(folder: str | Path, *, size: int = 64, resolution: int = 64, seed: int = 0) -> Path:
    """Generate `size` images (¾ square, ¼ landscape) into `folder`; returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"soar-fast-demo:{seed}")
    square, wide = demo_buckets(resolution)
    lines = []
    for i in range(size):
        bucket = wide if i % 4 == 3 else square
        img, caption = _draw(rng, bucket)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
        md5 = hashlib.md5(data).hexdigest()
        _write_if_changed(folder / f"{md5}.jpg", data)
        lines.append(json.dumps({"md5": md5, "caption_en": caption, "bw": bucket[0], "bh": bucket[1]}))
    jsonl = folder / "data.jsonl"
    _write_if_changed(jsonl, ("\n".join(lines) + "\n").encode())
    return jsonl
