"""The toy autoencoder (`model.vae = "toy"`): a fixed, training-free, exactly invertible map between
RGB images and 16-channel latents, so that what a demo-sized model samples decodes to a picture.

encode: pixels [B, 3, H, W] → 2×2 pixel-unshuffle [B, 12, H/2, W/2] → `E·u` with E [16, 12]
orthonormal columns → latents [B, 16, H/2, W/2]. decode: `Eᵀ·z`, then pixel-shuffle. EᵀE = I, so
decode(encode(x)) = x up to float rounding. A latent outside E's 12-dimensional range (a model's
sample) decodes to its orthogonal projection onto it.

E is the first 12 columns of the 16×16 Sylvester–Hadamard matrix divided by 4. Its entries are ±1/4,
exact in float32 and bfloat16, and the matrix needs no random draw or QR, whose signs can differ
between LAPACK builds. Every latent channel therefore mixes all 12 values of its 2×2 pixel block.

It duck-types what soar-fast uses of diffusers' `AutoencoderKL`: `config` (latent_channels,
scaling_factor, shift_factor, and `downsample_factor` in place of `block_out_channels`),
`encode(x).latent_dist.mean/.std` (std 0: the map is deterministic), `decode(z).sample`, `device`,
`dtype`. `models.vae` applies SD3's `z0 = scaling·(x − shift)` around it like around any VAE.
Saved as `vae/config.json` (`_class_name` "ToyAutoencoder") and `vae/diffusion_pytorch_model.safetensors`
(the matrix); `load_toy_autoencoder` checks both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import FrozenDict

from soar_fast.models.folder import ModelFolderError
from soar_fast.models.presets import SD3_SCALING_FACTOR, SD3_SHIFT_FACTOR, TOY_AUTOENCODER, TOY_DOWNSAMPLE

LATENT_CHANNELS = 16
DOWNSAMPLE = TOY_DOWNSAMPLE
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
# |EᵀE − I| a stored matrix may show and still count as orthonormal (float32 rounding of ±1/4 is exact,
# of any other orthonormal matrix about 1e-7).
ORTHONORMAL_ATOL = 1e-5


def hadamard_embedding(latent_channels: int = LATENT_CHANNELS, pixel_channels: int = 3 * DOWNSAMPLE ** 2) -> torch.Tensor:
    """[latent_channels, pixel_channels] float32 with orthonormal columns: Sylvester–Hadamard / √n."""
    n = latent_channels
    assert n & (n - 1) == 0 and pixel_channels <= n, f"need a power of two >= {pixel_channels}, got {n}"
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h[:, :pixel_channels] / n ** 0.5).to(torch.float32)


@dataclass(frozen=True)
class _Posterior:
    mean: torch.Tensor
    std: torch.Tensor


@dataclass(frozen=True)
class _Encoded:
    latent_dist: _Posterior


@dataclass(frozen=True)
class _Decoded:
    sample: torch.Tensor


class ToyAutoencoder(torch.nn.Module):
    """See the module docstring. Computes in float32 whatever dtype it is asked to move to: the
    pipeline casts its parts to bf16 on CUDA, and a bf16 round trip would no longer be lossless."""

    def __init__(self, embedding: torch.Tensor | None = None, *, scaling_factor: float = SD3_SCALING_FACTOR,
                 shift_factor: float = SD3_SHIFT_FACTOR) -> None:
        # SD3's factors by default: they bring the demo images' latents near unit variance, the scale of
        # the noise they are mixed with.
        super().__init__()
        e = hadamard_embedding() if embedding is None else embedding.to(torch.float32)
        assert e.ndim == 2 and e.shape[1] == 3 * DOWNSAMPLE ** 2, f"embedding must be [C, 12], got {tuple(e.shape)}"
        self.register_buffer("embedding", e.contiguous())
        self.config = FrozenDict(_class_name=TOY_AUTOENCODER, latent_channels=int(e.shape[0]),
                                 downsample_factor=DOWNSAMPLE, scaling_factor=float(scaling_factor),
                                 shift_factor=float(shift_factor))
        self.requires_grad_(False).eval()

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _apply(self, fn, recurse=True):
        # `.to(dtype)`, `.half()`, ...: move the matrix, keep it float32 (see the class docstring).
        super()._apply(fn, recurse)
        self.embedding = self.embedding.to(torch.float32)
        return self

    def encode(self, pixels: torch.Tensor) -> _Encoded:
        """pixels [B, 3, H, W] (H, W even) → posterior of latents [B, 16, H/2, W/2], std 0."""
        assert pixels.ndim == 4 and pixels.shape[1] == 3, f"pixels must be [B, 3, H, W], got {tuple(pixels.shape)}"
        assert pixels.shape[-2] % DOWNSAMPLE == 0 and pixels.shape[-1] % DOWNSAMPLE == 0, (
            f"image sides must be multiples of {DOWNSAMPLE}, got {tuple(pixels.shape[-2:])}")
        u = F.pixel_unshuffle(pixels.to(self.device, torch.float32), DOWNSAMPLE)
        z = torch.einsum("ij,bjhw->bihw", self.embedding, u)
        return _Encoded(_Posterior(z, torch.zeros_like(z)))

    def decode(self, latents: torch.Tensor) -> _Decoded:
        """latents [B, 16, h, w] → pixels [B, 3, 2h, 2w] (no clamping: `models.vae.decode` clamps)."""
        c = self.embedding.shape[0]
        assert latents.ndim == 4 and latents.shape[1] == c, f"latents must be [B, {c}, h, w], got {tuple(latents.shape)}"
        u = torch.einsum("ij,bihw->bjhw", self.embedding, latents.to(self.device, torch.float32))
        return _Decoded(F.pixel_shuffle(u, DOWNSAMPLE))

    def save_pretrained(self, folder: str | Path) -> Path:
        """`folder/config.json` + `folder/diffusion_pytorch_model.safetensors` (the matrix)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(dict(self.config), indent=2) + "\n")
        save_file({"embedding": self.embedding.detach().cpu().contiguous()}, str(folder / WEIGHTS_NAME))
        return folder


def build_toy_autoencoder(device: torch.device | str = "cpu") -> ToyAutoencoder:
    return ToyAutoencoder().to(device)


def load_toy_autoencoder(folder: str | Path, config: dict, device: torch.device | str = "cpu") -> ToyAutoencoder:
    """The toy autoencoder saved in `folder` (its parsed `config.json` given); a ModelFolderError naming
    the file when the matrix is missing, misshapen or not orthonormal (decoding would not invert encoding)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: missing (the toy autoencoder's matrix)")
    try:
        e = load_file(str(weights))["embedding"]
    except (SafetensorError, KeyError, OSError) as err:
        raise ModelFolderError(f"{weights}: no readable 'embedding' tensor ({err})") from None
    channels = int(config.get("latent_channels", LATENT_CHANNELS))
    if int(config.get("downsample_factor", DOWNSAMPLE)) != DOWNSAMPLE or tuple(e.shape) != (channels, 3 * DOWNSAMPLE ** 2):
        raise ModelFolderError(f"{weights}: embedding is {tuple(e.shape)}, config.json says {channels} latent "
                               f"channels and downsample_factor {config.get('downsample_factor')}: expected "
                               f"({channels}, {3 * DOWNSAMPLE ** 2}) and {DOWNSAMPLE}")
    e = e.to(torch.float32)
    gram = e.T.double() @ e.double()
    if not torch.allclose(gram, torch.eye(e.shape[1], dtype=torch.float64), atol=ORTHONORMAL_ATOL, rtol=0):
        raise ModelFolderError(f"{weights}: the embedding's columns are not orthonormal, so decoding would not "
                               "invert encoding")
    try:
        scaling, shift = float(config["scaling_factor"]), float(config["shift_factor"])
    except (KeyError, TypeError, ValueError):
        raise ModelFolderError(f"{folder / 'config.json'}: needs numeric scaling_factor and shift_factor") from None
    return ToyAutoencoder(e, scaling_factor=scaling, shift_factor=shift).to(device)
