"""Shapes the data must agree with, read from config files only (no model import, no weights)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from soar_fast.config import DataConfig, ModelConfig
from soar_fast.data.errors import DataError
from soar_fast.models.presets import model_geometry, preset_vae

# Seed of the tiny encoders' random weights: part of the model, not of the run, so a demo cache
# stays valid across training seeds.
TINY_ENCODER_SEED = 0


def transformer_config(model: ModelConfig) -> dict[str, Any]:
    """The transformer's diffusers config: `<path>/transformer/config.json`, else the preset's."""
    if model.path:
        path = Path(model.path) / "transformer" / "config.json"
        if not path.is_file():
            raise DataError(f"{path}: model.path has no transformer/config.json")
        return json.loads(path.read_text())
    from soar_fast.models.transformer import PRESETS
    return dict(PRESETS[model.preset])


def size_multiple(model: ModelConfig) -> int:
    """Bucket sides must be multiples of this: VAE downsampling × transformer patch size (16 for SD3,
    4 for the toy autoencoder); `models.presets.model_geometry` decides it."""
    geometry = model_geometry(model.preset, model.path, model.vae)
    if geometry is None:
        transformer_config(model)  # raises the DataError naming the missing config
        raise DataError(f"{model.path}: model.path has no readable transformer config")
    return geometry.size_multiple


def _folder_digest(root: Path) -> str:
    """Hash of the encoder configs and weight-file sizes: cheap, catches a swapped model folder."""
    h = hashlib.sha256()
    for sub in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae", "tokenizer", "tokenizer_2",
                "tokenizer_3"):
        for f in sorted((root / sub).glob("*")):
            h.update(f"{sub}/{f.name}:{f.stat().st_size}".encode())
            if f.suffix == ".json" and f.stat().st_size < 1 << 20:
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def encoder_identity(model: ModelConfig, data: DataConfig) -> dict[str, Any]:
    """What embeddings and latents depend on; a cache is valid only for the identity it was written with."""
    if model.path:
        root = Path(model.path)
        identity = {"kind": "path", "path": str(root.resolve()), "digest": _folder_digest(root)}
    else:
        cfg = transformer_config(model)
        identity = {"kind": "tiny", "preset": model.preset, "embed_dim": cfg["joint_attention_dim"],
                    "pooled_dim": cfg["pooled_projection_dim"], "latent_channels": cfg["in_channels"],
                    "seed": TINY_ENCODER_SEED, "vae": preset_vae(model.preset, model.vae)}
    return identity | {"encoder_dtype": data.encoder_dtype, "max_sequence_length": data.max_sequence_length}
