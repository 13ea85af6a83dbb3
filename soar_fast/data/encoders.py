"""The encoder set of a run: the text encoders and VAE of `model.path`, or, when no path is set (the
demo), tiny random text encoders shaped for the preset transformer and the VAE of `model.vae`. Used
by `soar-fast cache`, the demo's one-off encoding and on-the-fly training; never built when training
from a cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soar_fast.config import DataConfig, ModelConfig
from soar_fast.data.model_dims import TINY_ENCODER_SEED, encoder_identity, transformer_config
from soar_fast.models.presets import preset_vae
from soar_fast.models.text import TextEncoders, build_tiny_text_encoders, load_text_encoders
from soar_fast.models.vae import Vae, build_vae, encode_posterior, load_vae

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Encoders:
    text: TextEncoders
    vae: Vae
    max_sequence_length: int
    identity: dict[str, Any]   # what a cache built with these encoders is only valid for

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.encode(captions, self.max_sequence_length)

    def encode_pixels(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_posterior(self.vae, pixels)


def load_encoders(model: ModelConfig, data: DataConfig, device: torch.device | str = "cpu") -> Encoders:
    dtype = DTYPES[data.encoder_dtype]
    if model.path:
        root = Path(model.path)
        text = load_text_encoders(root, device, dtype)
        vae = load_vae(root, device)
    else:
        cfg = transformer_config(model)
        embed, pooled, channels = cfg["joint_attention_dim"], cfg["pooled_projection_dim"], cfg["in_channels"]
        text = build_tiny_text_encoders(embed, pooled, seed=TINY_ENCODER_SEED, device=device, dtype=dtype)
        vae = build_vae(preset_vae(model.preset, model.vae), channels, seed=TINY_ENCODER_SEED, device=device)
    return Encoders(text, vae, data.max_sequence_length, encoder_identity(model, data))

