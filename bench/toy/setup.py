"""What every run of the toy experiment shares: the model folder (tiny text encoders, the toy
autoencoder, a narrow SD3 transformer with random weights), the shapes training set, the held-out
prompts, and renders of those prompts for the exposure-bias diagnostics."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path

import torch

from bench.toy.protocol import Protocol


def transformer_config(p: Protocol) -> dict:
    """SD3's transformer with the tiny encoders' widths (64) and `p`'s depth and width."""
    return {"sample_size": p.side // 2, "patch_size": 2, "in_channels": 16, "out_channels": 16,
            "num_layers": p.layers, "attention_head_dim": p.head_dim, "num_attention_heads": p.heads,
            "joint_attention_dim": 64, "caption_projection_dim": p.heads * p.head_dim,
            "pooled_projection_dim": 64, "pos_embed_max_size": 32, "dual_attention_layers": (0,),
            "qk_norm": "rms_norm"}


def write_model_folder(folder: Path, p: Protocol) -> Path:
    """The pipeline folder of `preset export toy` with the transformer replaced by `p`'s."""
    from diffusers import SD3Transformer2DModel

    from soar_fast.models.export import export_toy_pipeline

    if (folder / "transformer" / "config.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_toy_pipeline(tmp)
    shutil.rmtree(tmp / "transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.init_seed)
        SD3Transformer2DModel(**transformer_config(p)).save_pretrained(tmp / "transformer")
    os.replace(tmp, folder)
    return folder


def model_with_transformer(base: Path, transformer: Path, folder: Path) -> Path:
    """A pipeline folder whose parts link to `base`'s except `transformer/` (e.g. a trained one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in base.iterdir():
        link = folder / part.name
        if not link.exists() and part.name != "transformer":
            link.symlink_to(part.resolve())
    link = folder / "transformer"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(transformer.resolve())
    return folder


def write_heldout_renders(folder: Path, prompts: list[dict], p: Protocol) -> Path:
    """One render per held-out prompt in the reference format: the (z0, c) pairs of `diagnose`."""
    from soar_fast.toy import render

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"soar-fast-toy-heldout-renders:{p.data_seed}")
    lines = []
    for row in prompts:
        buf = io.BytesIO()
        render(row, p.side, rng).save(buf, format="PNG")
        md5 = hashlib.md5(buf.getvalue()).hexdigest()
        (folder / f"{md5}.png").write_bytes(buf.getvalue())
        lines.append(json.dumps({"md5": md5, "caption_en": row["prompt"], "bw": p.side, "bh": p.side}))
    jsonl = folder / "data.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    return jsonl


def prepare(root: Path, p: Protocol) -> dict:
    """Everything shared, under `root`; returns the paths."""
    from soar_fast.toy import heldout_prompts, write_shapes_set

    root.mkdir(parents=True, exist_ok=True)
    train_jsonl = write_shapes_set(root / "data", size=p.train_images, side=p.side, seed=p.data_seed)
    prompts = heldout_prompts(seed=p.data_seed, n=p.heldout_prompts)
    (root / "heldout.jsonl").write_text("\n".join(json.dumps(r) for r in prompts) + "\n")
    return {"model": write_model_folder(root / "model-init", p), "train_jsonl": train_jsonl,
            "prompts": prompts, "heldout_jsonl": write_heldout_renders(root / "heldout-renders", prompts, p)}
