"""The SD3 VAE: posterior mean and std with the shift and scaling factors applied, and decoding.

`z0 = scaling·(sample − shift)` with `sample = mean + std·ε`, so the scaled posterior is
`mean' = scaling·(mean − shift)`, `std' = scaling·std` and `z0 = mean' + std'·ε`: the trainer draws ε.
The reference encodes in float32 (docs/data.md, "Text encoding and the VAE"); so does this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from soar_fast.models.folder import ModelFolderError

# SD3 / SD3.5 VAE factors (vae/config.json of the released models); the tiny VAE keeps them.
SD3_SCALING_FACTOR = 1.5305
SD3_SHIFT_FACTOR = 0.0609


def load_vae(path: str | Path, device: torch.device | str = "cpu") -> AutoencoderKL:
    """`<path>/vae` of a local SD3 diffusers folder (local files only), float32, eval, no grad."""
    folder = Path(path) / "vae"
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"{folder}: no VAE here (expected vae/config.json of an SD3 diffusers folder)")
    vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=torch.float32)
    return vae.requires_grad_(False).eval().to(device)


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


def _factors(vae: AutoencoderKL) -> tuple[float, float]:
    shift = vae.config.shift_factor
    return float(vae.config.scaling_factor), float(shift) if shift is not None else 0.0


def scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell (8 for SD3)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def encode_posterior(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels [B, 3, H, W] in [-1, 1] → (mean, std) [B, C, H/8, W/8] float32, shift/scaling applied."""
    assert pixels.ndim == 4 and pixels.shape[1] == 3, f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}"
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    scaling, shift = _factors(vae)
    return ((dist.mean - shift) * scaling).float(), (dist.std * scaling).float()


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, h, w] → pixels [B, 3, 8h, 8w] in [0, 1], float32."""
    scaling, shift = _factors(vae)
    x = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / scaling + shift).sample
    return (x.float() / 2 + 0.5).clamp(0, 1)
