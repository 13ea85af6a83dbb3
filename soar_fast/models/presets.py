"""The built-in transformer architectures, and the image geometry of a model read from config files
only (no torch, no weights), so the config loader can check image sides before anything loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# SD3.5-Medium's transformer (stabilityai/stable-diffusion-3.5-medium, transformer/config.json).
_SD35M: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
    "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm",
}
# SD3.5-Large's transformer (stabilityai/stable-diffusion-3.5-large, transformer/config.json): 38 layers,
# 38 heads x 64 = 2432 wide, no dual-attention layers, RMS qk-norm; 8.1B parameters.
_SD35L: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 38,
    "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": 4096,
    "caption_projection_dim": 2432, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
    "dual_attention_layers": (), "qk_norm": "rms_norm",
}
# Same block types as sd35m (a dual-attention block, RMS qk-norm), CPU-sized: 2 layers, 64 wide, 0.3M
# parameters; a whole SOAR step (B=4, K=6, 154 text tokens) is ~0.1 s of one CPU core at 8x8 latents (64 px
# through SD3's VAE geometry) and ~0.3-0.5 s at the demo's 32x32 (64 px through the toy autoencoder).
_TINY: dict[str, Any] = {
    "sample_size": 32, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 2,
    "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": 64, "caption_projection_dim": 64,
    "pooled_projection_dim": 64, "pos_embed_max_size": 64, "dual_attention_layers": (0,), "qk_norm": "rms_norm",
}
PRESETS: dict[str, dict[str, Any]] = {"tiny": _TINY, "sd35m": _SD35M, "sd35l": _SD35L}

# SD3's VAE (and the tiny one, `models.vae.tiny_vae_config`) downsamples by 8: 4 blocks.
DEFAULT_VAE_FACTOR = 8
# SD3 / SD3.5 VAE factors (vae/config.json of the released models); the tiny and toy VAEs keep them.
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609
# The toy autoencoder (`models/toy_vae.py`): `_class_name` of its vae/config.json, and its downsampling.
TOY_AUTOENCODER = "ToyAutoencoder"
TOY_DOWNSAMPLE = 2


@dataclass(frozen=True)
class Geometry:
    patch_size: int
    vae_factor: int
    pos_embed_max_size: int | None
    """Latent patches per side of the positional table; None = interpolated to any size."""
    source: str
    """Where the numbers come from: `preset tiny` or the model folder."""

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (16 for SD3)."""
        return self.vae_factor * self.patch_size

    @property
    def max_side(self) -> int:
        """The largest image side the positional table covers (no bound: a very large number)."""
        return self.pos_embed_max_size * self.size_multiple if self.pos_embed_max_size else 1 << 20


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def vae_factor(vae_config: Any) -> int:
    """Pixels per latent cell of a VAE config (a vae/config.json, or a loaded VAE's `.config`): the toy
    autoencoder's `downsample_factor`, an AutoencoderKL's 2^(blocks − 1) (8 for SD3); 8 when unknown."""
    if not vae_config:
        return DEFAULT_VAE_FACTOR
    if "downsample_factor" in vae_config:
        return int(vae_config["downsample_factor"])
    if "block_out_channels" in vae_config:
        return 2 ** (len(vae_config["block_out_channels"]) - 1)
    return DEFAULT_VAE_FACTOR


def preset_vae(preset: str, vae: str) -> str:
    """`model.vae` decided for a preset: `auto` = `toy` for `tiny` (the demo), `tiny` for the SD3.5 sizes."""
    if vae != "auto":
        return vae
    return "toy" if preset == "tiny" else "tiny"


def model_geometry(preset: str, path: str | None, vae: str = "auto") -> Geometry | None:
    """The geometry of `model.path` (pipeline or bare transformer folder; its own vae/ decides the VAE
    factor) or of the preset with `model.vae`; None when the folder has no readable transformer config
    (the model-folder check reports that)."""
    if not path:
        cfg = PRESETS[preset]
        kind = preset_vae(preset, vae)
        factor = TOY_DOWNSAMPLE if kind == "toy" else DEFAULT_VAE_FACTOR
        return Geometry(cfg["patch_size"], factor, cfg["pos_embed_max_size"], f"preset {preset} with the {kind} VAE")
    root = Path(path)
    cfg = _read_json(root / "transformer" / "config.json") or _read_json(root / "config.json")
    if cfg is None:
        return None
    factor = vae_factor(_read_json(root / "vae" / "config.json"))
    return Geometry(int(cfg.get("patch_size", 2)), factor, cfg.get("pos_embed_max_size"), str(root))
