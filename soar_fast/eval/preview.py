"""Training-time previews (`log.sample_every`; by default every 50 steps of the embedded demo, on
held-out demo captions): a fixed prompt list with fixed seeds rendered by the
current transformer into one grid, `<output_dir>/samples/step-<N:07d>.png`, and to TensorBoard; with
`eval.preview_ema` the EMA weights render a second grid, `step-<N:07d>-ema.png` (`samples_ema`).

The trainer builds a `Preview` once (the prompts are encoded then and the text encoders dropped, so
training from a cache pays for them only at start) and calls `render_preview` every
`log.sample_every` steps. Seeds, prompts, steps and resolution never change during a run, so the grids
of successive steps differ only by the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from soar_fast.config import Config
from soar_fast.eval.images import contact_sheet, to_uint8
from soar_fast.eval.sampler import FlowSampler, initial_noise
from soar_fast.models.vae import decode, scale_factor

# `log.sample_every = None`: the embedded demo's preview interval (a grid costs about as much as a
# few training steps there).
DEMO_PREVIEW_EVERY = 50
DEMO_PREVIEW_PROMPTS = 4
DEFAULT_PROMPTS = (
    "a photo of a red circle on a white background",
    "a photo of a cat sitting on a blue square",
    "a painting of a house under a yellow sky",
    'a person holding a sign that says "soar"',
)


@dataclass
class Preview:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    prompt_embeds: torch.Tensor
    """(B, L, D) at the training T5 length `data.max_sequence_length`."""
    pooled: torch.Tensor
    null_embeds: torch.Tensor
    null_pooled: torch.Tensor
    vae: Any
    scheduler_config: dict[str, Any]
    steps: int
    cfg_scale: float
    latent_shape: tuple[int, int, int]
    device: torch.device


def trains_the_demo(cfg: Config) -> bool:
    """A preset trained on the generated demo set: the embedded demo."""
    return not cfg.model.path and cfg.data.jsonl is None and cfg.data.cache is None


def preview_every(cfg: Config) -> int:
    """`log.sample_every` resolved: None = DEMO_PREVIEW_EVERY for the embedded demo, else never."""
    if cfg.log.sample_every is not None:
        return cfg.log.sample_every
    return DEMO_PREVIEW_EVERY if trains_the_demo(cfg) else 0


def preview_prompts(cfg: Config) -> tuple[str, ...]:
    """`eval.preview_prompts`; else, for the demo, its first held-out demo captions (the prompts that
    `soar-fast sample` of the run starts with), else DEFAULT_PROMPTS."""
    if cfg.eval.preview_prompts:
        return tuple(cfg.eval.preview_prompts)
    if not trains_the_demo(cfg):
        return DEFAULT_PROMPTS
    from soar_fast.data.demo import demo_captions, held_out_captions

    training = demo_captions(cfg.data, cfg.model, seed=cfg.train.seed)
    return tuple(held_out_captions(training, DEMO_PREVIEW_PROMPTS, seed=cfg.train.seed))


def build_preview(cfg: Config, device: torch.device | str, *, encoders: Any = None) -> Preview:
    """Encode the preview prompts once (with the run's encoders if given, else loading them) and keep
    the VAE. Prompts: `preview_prompts(cfg)`; seeds `eval.seed + i`; `eval.preview_steps` steps at
    `eval.cfg_scale`; `model.resolution` pixels."""
    from soar_fast.data.encoders import load_encoders
    from soar_fast.models.transformer import scheduler_config

    device = torch.device(device)
    prompts = preview_prompts(cfg)
    if encoders is None:
        dtype = "bfloat16" if device.type == "cuda" else "float32"
        encoders = load_encoders(cfg.model, dataclasses.replace(cfg.data, encoder_dtype=dtype), device)
    with torch.no_grad():
        embeds, pooled = encoders.text.encode(list(prompts), cfg.data.max_sequence_length)
        null_embeds, null_pooled = encoders.text.encode([""], cfg.data.max_sequence_length)
    f = scale_factor(encoders.vae)
    channels = int(encoders.vae.config.latent_channels)
    if cfg.model.resolution % (2 * f):
        raise ValueError(f"model.resolution = {cfg.model.resolution} must be a multiple of {2 * f} for previews")
    side = cfg.model.resolution // f
    return Preview(prompts, tuple(cfg.eval.seed + i for i in range(len(prompts))), embeds.to(device),
                   pooled.to(device), null_embeds.to(device), null_pooled.to(device), encoders.vae.to(device),
                   scheduler_config(cfg.model), cfg.eval.preview_steps, cfg.eval.cfg_scale, (channels, side, side),
                   device)


@torch.no_grad()
def render_preview(transformer: torch.nn.Module, preview: Preview, *, step: int, output_dir: str,
                   writer: Any = None, write: bool = True, suffix: str = "") -> str | None:
    """Sample the preview grid with `transformer` (the unwrapped module) and save it; returns the PNG
    path (None when `write` is False: FSDP ranks other than 0 still run the forwards). `writer`: a
    TensorBoard SummaryWriter or None. `suffix` ("-ema") names the file `step-N<suffix>.png` and the
    TensorBoard tag `samples<suffix>` (with `_`). The module's train/eval mode is restored."""
    from soar_fast.models.transformer import velocity_fn

    was_training = transformer.training
    transformer.eval()
    dtype = next(transformer.parameters()).dtype
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if preview.device.type == "cuda"
                else contextlib.nullcontext())
    try:
        sampler = FlowSampler(velocity_fn(transformer), preview.scheduler_config, steps=preview.steps,
                              cfg_scale=preview.cfg_scale, patch_size=int(transformer.config.patch_size))
        noise = initial_noise(preview.seeds, preview.latent_shape, preview.device)
        with autocast:
            latents = sampler.sample(noise, preview.prompt_embeds, preview.pooled, preview.null_embeds,
                                     preview.null_pooled, model_dtype=dtype)
        images = decode(preview.vae, latents)
    finally:
        transformer.train(was_training)
    if not write:
        return None
    grid = np.asarray(contact_sheet(list(to_uint8(images)), columns=len(preview.prompts)))
    path = os.path.join(output_dir, "samples", f"step-{step:07d}{suffix}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    from PIL import Image

    Image.fromarray(grid).save(path)
    if writer is not None:
        writer.add_image("samples" + suffix.replace("-", "_"), grid, step, dataformats="HWC")
    return path
