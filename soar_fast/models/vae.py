"""The SD3 VAE: posterior mean and std with the shift and scaling factors applied, and decoding.

`z0 = scaling·(sample − shift)` with `sample = mean + std·ε`, so the scaled posterior is
`mean' = scaling·(mean − shift)`, `std' = scaling·std` and `z0 = mean' + std'·ε`: the trainer draws ε.
The reference encodes in float32 (docs/data.md, "Text encoding and the VAE"); so does this module.

Two VAEs without weights to download stand in for SD3's (`model.vae`, when no `model.path` is set):
`tiny`, a random-init AutoencoderKL of SD3's layout (its decodes are coloured noise), and `toy`, the
lossless fixed map of `models/toy_vae.py` (its decodes are pictures). Every function here takes any
of the three.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from soar_fast.models.folder import ModelFolderError
from soar_fast.models.presets import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR, TOY_AUTOENCODER, vae_factor
from soar_fast.models.toy_vae import ToyAutoencoder, build_toy_autoencoder, load_toy_autoencoder

Vae = AutoencoderKL | ToyAutoencoder


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> Vae:
    """`<path>/vae` of a local SD3 diffusers folder (local files only), float32, eval, no grad: an
    AutoencoderKL, or the toy autoencoder when its config.json says `"_class_name": "ToyAutoencoder"`.
    A missing, unreadable or unknown VAE is a ModelFolderError naming the path."""
    folder = Path(path) / "vae"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(f"{folder}: no VAE here (expected vae/config.json of an SD3 diffusers folder)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{config_file}: not readable JSON ({e})") from None
    kind = config.get("_class_name", "AutoencoderKL") if isinstance(config, dict) else None
    if kind == TOY_AUTOENCODER:
        return load_toy_autoencoder(folder, config, device)
    if kind != "AutoencoderKL":
        raise ModelFolderError(f"{config_file}: unknown VAE class {kind!r} (expected AutoencoderKL or "
                               f"{TOY_AUTOENCODER})")
    try:
        vae, info = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32,
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelFolderError(f"{folder}: the AutoencoderKL does not load ({str(e).splitlines()[0]})") from None
    if info.get("missing_keys"):  # diffusers leaves them uninitialised (on the meta device)
        raise ModelFolderError(f"{folder}: the AutoencoderKL does not load (its weights lack "
                               f"{len(info['missing_keys'])} tensors, e.g. {min(info['missing_keys'])})")
    return vae.requires_grad_(False).eval().to(device)


def build_vae(kind: str, latent_channels: int = 16, *, seed: int = 0, device: torch.device | str = "cpu") -> Vae:
    """The VAE of `model.vae` without a model folder: `toy` (lossless, fixed) or `tiny` (random-init)."""
    if kind == "toy":
        if latent_channels != 16:
            raise ValueError(f"model.vae = toy makes 16 latent channels; the transformer takes {latent_channels}")
        return build_toy_autoencoder(device)
    return build_tiny_vae(latent_channels, seed=seed, device=device)


def tiny_vae_config(latent_channels: int = 16) -> dict:
    """SD3's VAE layout (4 blocks → downsampling 8, no quant convs) with very few channels."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": latent_channels,
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64,
            "mid_block_add_attention": False, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": SD3_SCALING_FACTOR, "shift_factor": SD3_SHIFT_FACTOR}


def build_tiny_vae(latent_channels: int = 16, *, seed: int = 0, posterior_std: float = 0.05,
                   device: torch.device | str = "cpu") -> AutoencoderKL:
    """Random-init tiny AutoencoderKL. Its log-variance head is set to a constant so the posterior std
    is `posterior_std` (before scaling): a random encoder's default std ≈ 1 would bury the image in
    posterior noise and leave the demo nothing to learn."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vae = AutoencoderKL(**tiny_vae_config(latent_channels))
    finally:
        torch.random.set_rng_state(state)
    conv = vae.encoder.conv_out
    with torch.no_grad():
        conv.weight[latent_channels:].zero_()
        conv.bias[latent_channels:].fill_(2.0 * float(torch.log(torch.tensor(posterior_std))))
    return vae.requires_grad_(False).eval().to(device)


def _factors(vae: Any) -> tuple[float, float]:
    shift = vae.config.shift_factor
    return float(vae.config.scaling_factor), float(shift) if shift is not None else 0.0


def scale_factor(vae: Any) -> int:
    """Pixels per latent cell (8 for SD3, 2 for the toy autoencoder)."""
    return vae_factor(vae.config)


@torch.no_grad()
def encode_posterior(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels [B, 3, H, W] in [-1, 1] → (mean, std) [B, C, H/f, W/f] float32, shift/scaling applied."""
    assert pixels.ndim == 4 and pixels.shape[1] == 3, f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}"
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    scaling, shift = _factors(vae)
    return ((dist.mean - shift) * scaling).float(), (dist.std * scaling).float()


@torch.no_grad()
def decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, h, w] → pixels [B, 3, f·h, f·w] in [0, 1], float32."""
    scaling, shift = _factors(vae)
    x = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / scaling + shift).sample
    return (x.float() / 2 + 0.5).clamp(0, 1)
