"""The embedded demo data set: coloured shapes on coloured backgrounds with matching captions
("a red circle on a blue background"), generated from the seed and written in the reference format
(`data.jsonl` + `<md5>.jpg`), so the demo runs the same reading path as user data."""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from soar_fast.atomic import write_if_changed
from soar_fast.config import DataConfig, ModelConfig
from soar_fast.config_rules import DEMO_WIDEST_ASPECT

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "white": (245, 245, 245), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")


def demo_buckets(resolution: int, multiple: int = 16) -> list[tuple[int, int]]:
    """A square bucket at `resolution` and a 5:3 landscape one, both multiples of `multiple` (the
    model's VAE factor × patch size)."""
    m = multiple
    side = max(m, resolution // m * m)
    wide = (max(m, round(side * DEMO_WIDEST_ASPECT / m) * m), max(m, round(side * 0.75 / m) * m))
    return [(side, side), wide]


def _caption(fg_name: str, shape: str, bg_name: str) -> str:
    return f"a {fg_name} {shape} on a {bg_name} background"


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
    return img, _caption(fg_name, shape, bg_name)


def demo_samples(*, size: int = 64, resolution: int = 64, seed: int = 0,
                 multiple: int = 16) -> Iterator[tuple[Image.Image, str, tuple[int, int]]]:
    """The demo set's (image, caption, bucket) in order: ¾ square, ¼ landscape, drawn from `seed`."""
    rng = random.Random(f"soar-fast-demo:{seed}")
    square, wide = demo_buckets(resolution, multiple)
    for i in range(size):
        bucket = wide if i % 4 == 3 else square
        img, caption = _draw(rng, bucket)
        yield img, caption, bucket


def demo_captions(data: DataConfig, model: ModelConfig, *, seed: int) -> set[str]:
    """The captions of the demo set a run with these sections and `train.seed` trains on (drawn again
    in memory: the images are a few milliseconds)."""
    from soar_fast.data.model_dims import size_multiple

    return {caption for _, caption, _ in demo_samples(size=data.demo_size, resolution=model.resolution,
                                                      seed=seed, multiple=size_multiple(model))}


def held_out_captions(training: set[str], count: int, *, seed: int = 0) -> list[str]:
    """`count` distinct demo captions (same colours, shapes and wording) that are not in `training`,
    drawn from a stream of their own: prompts a demo run has never seen. The caption space holds
    8 × 7 × 5 = 280 captions."""
    rng = random.Random(f"soar-fast-demo-held-out:{seed}")
    names = sorted(COLOURS)
    space = len(names) * (len(names) - 1) * len(SHAPES)
    if count > space - len(training):
        raise ValueError(f"only {space - len(training)} demo captions are not in the training set, {count} asked")
    out: list[str] = []
    while len(out) < count:
        fg_name, bg_name = rng.sample(names, 2)
        caption = _caption(fg_name, rng.choice(SHAPES), bg_name)
        if caption not in training and caption not in out:
            out.append(caption)
    return out


def write_demo_set(folder: str | Path, *, size: int = 64, resolution: int = 64, seed: int = 0,
                   multiple: int = 16) -> Path:
    """Generate `size` images (¾ square, ¼ landscape, sides multiples of `multiple`) into `folder`;
    returns the JSONL path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for img, caption, bucket in demo_samples(size=size, resolution=resolution, seed=seed, multiple=multiple):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        data = buf.getvalue()
        md5 = hashlib.md5(data).hexdigest()
        write_if_changed(folder / f"{md5}.jpg", data)
        lines.append(json.dumps({"md5": md5, "caption_en": caption, "bw": bucket[0], "bh": bucket[1]}))
    jsonl = folder / "data.jsonl"
    write_if_changed(jsonl, ("\n".join(lines) + "\n").encode())
    return jsonl
