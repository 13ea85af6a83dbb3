"""Scores of one checkpoint: the held-out prompts sampled at each CFG scale of the protocol (Euler,
`sampling_steps`, one fixed seed per prompt) and read by the shapes detector (soar_fast/toy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.toy.protocol import Protocol

SHEET_PROMPTS = 12
"""Prompts per contact sheet (the first ones of the held-out list: two of each category)."""


def _pipelines(model: Path, checkpoint: str, p: Protocol) -> dict[float, object]:
    from soar_fast.config import EvalConfig, ModelConfig
    from soar_fast.eval.pipeline import load_pipeline
    from soar_fast.models.transformer import load_transformer

    model_cfg = ModelConfig(path=str(model), resolution=p.side)
    transformer = load_transformer(checkpoint)
    pipes = {}
    for w in p.score_cfgs:
        eval_cfg = EvalConfig(steps=p.sampling_steps, cfg_scale=w, resolution=p.side,
                              max_sequence_length=p.text_tokens, dtype="float32", compile=False)
        pipes[w] = load_pipeline(model_cfg, eval_cfg, torch.device("cpu"), transformer=transformer)
    return pipes


def sample_images(pipe, prompts: list[dict], p: Protocol, batch: int = 40) -> list[Image.Image]:
    from soar_fast.eval.images import to_uint8

    images = []
    for start in range(0, len(prompts), batch):
        rows = prompts[start:start + batch]
        seeds = [p.image_seed + start + i for i in range(len(rows))]
        images += [Image.fromarray(a) for a in to_uint8(pipe.generate([r["prompt"] for r in rows], seeds))]
    return images


def score_checkpoint(model: Path, checkpoint: str, prompts: list[dict], p: Protocol,
                     sheet: Path | None = None) -> dict:
    """{"cfg=<w>": {"per_category", "overall"}}; `sheet` (a file stem) gets one contact sheet per scale."""
    from soar_fast.eval.images import contact_sheet
    from soar_fast.toy import evaluate

    torch.set_num_threads(1)
    out = {}
    for w, pipe in _pipelines(model, checkpoint, p).items():
        images = sample_images(pipe, prompts, p)
        out[f"cfg={w:g}"] = evaluate(images, prompts)
        if sheet is not None:
            sheet.parent.mkdir(parents=True, exist_ok=True)
            picked = [np.asarray(im) for im in images[:SHEET_PROMPTS]]
            contact_sheet(picked, columns=6).save(f"{sheet}-cfg{w:g}.png")
    return out
