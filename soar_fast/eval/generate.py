"""The sampling loop shared by `soar-fast sample` and `soar-fast eval`: plan (row, image) items with
their seeds and file names, sample this rank's share in batches, save PNGs, score in-process.

Image k of row r uses seed `eval.seed + r·images_per_prompt + k` and is written to
`images/<r:05d>-<k:02d>.png`, or in GenEval's layout `images/<r:05d>/samples/<k:04d>.png` (with the
row's `metadata.jsonl` beside `samples/`) when the GenEval scorer will read them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm import tqdm

from soar_fast.eval.images import ImageWriter, to_uint8
from soar_fast.eval.pipeline import SamplingPipeline
from soar_fast.eval.prompts import PromptRow
from soar_fast.eval.scorers import Scorer

Layout = Literal["flat", "geneval"]


@dataclass(frozen=True)
class ImageItem:
    row: PromptRow
    image_index: int
    seed: int
    path: str
    """Relative to the output folder."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.row.index, self.image_index)


def image_path(row: int, k: int, layout: Layout) -> str:
    if layout == "geneval":
        return os.path.join("images", f"{row:05d}", "samples", f"{k:04d}.png")
    return os.path.join("images", f"{row:05d}-{k:02d}.png")


def plan_items(rows: Sequence[PromptRow], images_per_prompt: int, seed: int, layout: Layout = "flat"
               ) -> list[ImageItem]:
    if images_per_prompt < 1:
        raise ValueError(f"eval.images_per_prompt must be >= 1, got {images_per_prompt}")
    return [ImageItem(r, k, seed + r.index * images_per_prompt + k, image_path(r.index, k, layout))
            for r in rows for k in range(images_per_prompt)]


def generate(pipe: SamplingPipeline, items: Sequence[ImageItem], output_dir: str, *, batch_size: int,
             scorers: Sequence[Scorer] = (), layout: Layout = "flat", progress: bool = True,
             pad_batches: bool = False) -> tuple[list[dict[str, Any]], float]:
    """Sample, save and score `items` (this rank's); returns (records, seconds of sampling + scoring).

    `pad_batches` fills a short last batch with repeats (results dropped) so a CUDA-graphed forward
    replays its captured shape instead of capturing and compiling a second one.
    """
    if batch_size < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {batch_size}")
    in_process = [s for s in scorers if not s.on_files]
    records: list[dict[str, Any]] = []
    if layout == "geneval":
        for row in {it.row.index: it.row for it in items}.values():
            folder = os.path.join(output_dir, "images", f"{row.index:05d}")
            os.makedirs(os.path.join(folder, "samples"), exist_ok=True)
            with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
                json.dump(row.metadata, f)  # GenEval reads one JSON object from this file
    bar = tqdm(total=len(items), desc="sampling", unit="img", disable=not progress, dynamic_ncols=True)
    seconds = 0.0
    writer = ImageWriter()
    try:
        for start in range(0, len(items), batch_size):
            batch = list(items[start:start + batch_size])
            n = len(batch)
            padded = batch + [batch[-1]] * (batch_size - n) if pad_batches else batch
            t0 = time.perf_counter()
            images = pipe.generate([it.row.prompt for it in padded], [it.seed for it in padded])[:n]
            prompts, metadata = [it.row.prompt for it in batch], [it.row.metadata for it in batch]
            scores: dict[str, list[float]] = {}
            for scorer in in_process:
                scores.update(scorer.score(images, prompts, metadata))
            pixels = to_uint8(images)  # host sync: the batch is done
            seconds += time.perf_counter() - t0
            for i, it in enumerate(batch):
                writer.save(pixels[i], os.path.join(output_dir, it.path))
                records.append({"row": it.row.index, "image_index": it.image_index, "seed": it.seed,
                                "prompt": it.row.prompt, "metadata": it.row.metadata, "image_path": it.path,
                                "scores": {k: float(v[i]) for k, v in scores.items()}})
            bar.update(n)
    finally:
        writer.close()
        bar.close()
    return records, seconds


def write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
