"""Everything needed to turn prompts and seeds into images: base model parts, an optional trained
transformer, the sampler, and the encode → sample → decode path shared by `sample`, `eval` and previews.

The base comes from `model.path` (a local SD3 diffusers folder) or, without one, the preset with the
demo's tiny encoders; `eval.checkpoint` (a `checkpoints/step-N` or `transformer/` folder) replaces the
base transformer: what the reference evaluation cannot load (docs/eval.md, "Differences from the reference evaluation").
A LoRA checkpoint or export (a `lora/` folder, or a folder holding one) is applied to the base it was
trained on (`model.path`, else the recorded preset) and merged into it before sampling.
`eval.use_ema` takes that checkpoint's EMA weights instead (models/ema_folder.py; with LoRA the EMA
adapter on the adapted model, merged the same way).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from soar_fast.config import DataConfig, EvalConfig, ModelConfig
from soar_fast.config_io import ConfigError
from soar_fast.eval.sampler import FlowSampler, initial_noise
from soar_fast.models.vae import decode, scale_factor

log = logging.getLogger(__name__)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """`eval.dtype`: auto = bfloat16 on CUDA, float32 elsewhere (CPU bf16 matmuls are slow and inexact)."""
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[choice]


@dataclass
class SamplingPipeline:
    transformer: torch.nn.Module
    text: Any
    """`models.text.TextEncoders`."""
    vae: Any
    sampler: FlowSampler
    device: torch.device
    dtype: torch.dtype
    max_sequence_length: int
    resolution: int

    def __post_init__(self) -> None:
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        f = scale_factor(self.vae)
        if self.resolution % (f * self.sampler.patch_size):
            raise ValueError(f"eval.resolution = {self.resolution} must be a multiple of "
                             f"{f * self.sampler.patch_size} (VAE factor {f} x patch {self.sampler.patch_size})")
        side = self.resolution // f
        return (int(self.transformer.config.in_channels), side, side)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.encode(list(prompts), self.max_sequence_length)

    def null_embedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty-string prompt (the SD3 pipeline's default negative), encoded once."""
        if self._null is None:
            self._null = self.encode([""])
        return self._null

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Images (B,3,H,W) float32 in [0,1] on `device`, image b from (prompts[b], seeds[b])."""
        assert len(prompts) == len(seeds), f"{len(prompts)} prompts but {len(seeds)} seeds"
        embeds, pooled = self.encode(prompts)
        null_embeds, null_pooled = self.null_embedding()
        noise = initial_noise(seeds, self.latent_shape, self.device)
        latents = self.sampler.sample(noise, embeds, pooled, null_embeds, null_pooled, model_dtype=self.dtype)
        return decode(self.vae, latents)


def load_pipeline(model_cfg: ModelConfig, eval_cfg: EvalConfig, device: torch.device, *,
                  transformer: torch.nn.Module | None = None) -> SamplingPipeline:
    """Load the base parts (and `eval.checkpoint`) for sampling on `device`; `transformer` overrides both.
    `eval.resolution` and `eval.max_sequence_length` must be resolved (`from_run.sampling_config`)."""
    if eval_cfg.resolution is None or eval_cfg.max_sequence_length is None:
        raise ValueError("load_pipeline: eval.resolution and eval.max_sequence_length must be set (None means "
                         "the training values: resolve them with eval.from_run.sampling_config)")
    from soar_fast.data.encoders import load_encoders
    from soar_fast.models.transformer import build_transformer, scheduler_config

    dtype = resolve_dtype(eval_cfg.dtype, device)
    enc_dtype = "bfloat16" if dtype == torch.bfloat16 else "float32"
    if transformer is None:
        if eval_cfg.checkpoint or eval_cfg.use_ema:
            transformer = trained_transformer(eval_cfg.checkpoint, base_path=model_cfg.path, dtype=dtype,
                                              use_ema=eval_cfg.use_ema)
        else:
            transformer = build_transformer(model_cfg)
    # After the transformer: a wrong eval.checkpoint fails before the text encoders load.
    encoders = load_encoders(model_cfg, dataclasses.replace(DataConfig(), encoder_dtype=enc_dtype,
                                                            max_sequence_length=eval_cfg.max_sequence_length),
                             device)
    transformer = _to(transformer, device, dtype).requires_grad_(False).eval()
    vae = _to(encoders.vae, device, dtype)
    channels = int(transformer.config.in_channels)
    if channels != int(vae.config.latent_channels):
        raise ValueError(f"transformer takes {channels} latent channels but the VAE makes "
                         f"{vae.config.latent_channels}: eval.checkpoint does not belong to model.path")
    velocity = _velocity(transformer, eval_cfg, device)
    sampler = FlowSampler(velocity, scheduler_config(model_cfg), steps=eval_cfg.steps, cfg_scale=eval_cfg.cfg_scale,
                          patch_size=int(transformer.config.patch_size))
    return SamplingPipeline(transformer, encoders.text, vae, sampler, device, dtype,
                            eval_cfg.max_sequence_length, eval_cfg.resolution)


def trained_transformer(checkpoint: str | None, *, base_path: str | None, dtype: torch.dtype,
                        use_ema: bool = False) -> torch.nn.Module:
    """The transformer `checkpoint` holds (module docstring): its weights, its LoRA adapter merged into the
    base (`base_path`, else the recorded one), or with `use_ema` its EMA weights (`eval.use_ema`)."""
    from soar_fast.models.lora_io import adapted_transformer, find_adapter_folder, merged_transformer
    from soar_fast.models.transformer import load_transformer

    if use_ema:
        from soar_fast.models.ema_folder import load_ema_transformer

        if not checkpoint:
            raise ConfigError("eval.use_ema = true needs eval.checkpoint: a checkpoints/step-N folder, or a run "
                              "folder (or its transformer/ or lora/) with transformer_ema/ or lora_ema/ beside it")
        log.info("sampling with the EMA weights of %s", checkpoint)
        return load_ema_transformer(checkpoint, dtype=dtype, base_path=base_path)
    assert checkpoint, "trained_transformer: no checkpoint"
    folder = find_adapter_folder(checkpoint)
    if folder is not None:
        log.info("sampling with the LoRA adapter of %s merged into its base", folder)
        # Merged once: sampling then runs plain Linear layers (and compiles like the base model).
        return merged_transformer(adapted_transformer(folder, path=base_path))
    log.info("sampling with the transformer of %s", checkpoint)
    return load_transformer(checkpoint, dtype=dtype)


def _to(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move, and cast only when needed (diffusers warns on every dtype `.to`). A module without
    parameters (the toy autoencoder) is only moved: it computes in float32 whatever is asked."""
    module = module.to(device)
    first = next(module.parameters(), None)
    return module if first is None or first.dtype == dtype else module.to(dtype)


def _velocity(transformer: torch.nn.Module, eval_cfg: EvalConfig, device: torch.device):
    """The model callable; on CUDA with `eval.compile`: best attention kernel, per-block compile, and the
    whole forward replayed from a CUDA graph (one per batch shape)."""
    from soar_fast.models.transformer import velocity_fn

    if device.type != "cuda" or not eval_cfg.compile:
        return velocity_fn(transformer)
    from soar_fast.accel import apply_attention, apply_compile, apply_cuda_graphs

    # As in training: an attention kernel compile cannot trace means per-block graphs, not fullgraph.
    attention = apply_attention(transformer, "auto", device, compiling=True)
    log.info("sampler: attention %s; %s", attention,
             apply_compile(transformer, fullgraph="untraceable" not in attention))
    graphed, desc = apply_cuda_graphs(velocity_fn(transformer), device, name="sampler forward")
    log.info("sampler: cuda graphs %s", desc)
    return graphed
