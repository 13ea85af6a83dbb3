"""The shapes training set on disk, in the reference format (docs/data.md, "Format"), and the
held-out prompt file in GenEval's evaluation_metadata.jsonl format."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

from soar_fast.atomic import write_if_changed
from soar_fast.toy.render import render
from soar_fast.toy.split import heldout_prompts, training_tags
from soar_fast.toy.tags import caption


def write_shapes_set(folder: str | Path, *, size: int, side: int = 32, seed: int = 0) -> Path:
    """`size` side × side PNGs and `data.jsonl` (md5, caption_en, bw, bh and the GenEval `tags` of
    the caption) into `folder`: the same pixels and lines for the same (size, side, seed); returns the
    JSONL path."""
    if side <= 0 or side % 16:
        raise ValueError(f"side={side} must be a positive multiple of 16 (the bucket rule of docs/data.md)")
    if size <= 0:
        raise ValueError(f"size={size} must be positive")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"soar-fast-shapes:{seed}")
    lines = []
    for i in range(size):
        tags = training_tags(rng, i)
        buf = io.BytesIO()
        render(tags, side, rng).save(buf, format="PNG")
        data = buf.getvalue()
        md5 = hashlib.md5(data).hexdigest()
        write_if_changed(folder / f"{md5}.png", data)
        lines.append(json.dumps({"md5": md5, "caption_en": caption(tags), "bw": side, "bh": side, "tags": tags}))
    jsonl = folder / "data.jsonl"
    write_if_changed(jsonl, ("\n".join(lines) + "\n").encode())
    return jsonl


def write_heldout_prompts(path: str | Path, *, seed: int = 0, n: int = 240) -> Path:
    """`heldout_prompts(seed=seed, n=n)` as JSONL, one GenEval metadata row per line (readable with
    `eval.dataset = "geneval"`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = heldout_prompts(seed=seed, n=n)
    write_if_changed(path, ("\n".join(json.dumps(r) for r in rows) + "\n").encode())
    return path
