"""Every random draw of one SOAR step, in one injectable record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .timesteps import Scheme, sample_t


@dataclass(frozen=True)
class SoarDraws:
    """The random inputs of one step (all float32, on one device).

    t0: (B,) unshifted times of the main points (1 = noise).
    z1: (B, C, H, W) N(0, I) noise endpoint shared by the main point and every aux point.
    fracs: (P, K, B) U[0, 1) positions of the aux points between σ1 and σ_up.
    path_noise: (P−1, B, C, H, W) N(0, I) for the stochastic rollout paths, or None when P == 1.
    """

    t0: torch.Tensor
    z1: torch.Tensor
    fracs: torch.Tensor
    path_noise: torch.Tensor | None

    def __post_init__(self) -> None:
        B = self.t0.shape[0]
        assert self.t0.ndim == 1, f"t0 must be (B,), got {tuple(self.t0.shape)}"
        assert self.z1.ndim >= 2 and self.z1.shape[0] == B, (
            f"z1 must be (B={B}, C, H, W), got {tuple(self.z1.shape)}")
        assert self.fracs.ndim == 3 and self.fracs.shape[2] == B, (
            f"fracs must be (P, K, B={B}), got {tuple(self.fracs.shape)}")
        P = self.fracs.shape[0]
        if P == 1:
            assert self.path_noise is None or self.path_noise.shape[0] == 0, (
                f"path_noise must be None with P = 1, got {tuple(self.path_noise.shape)}")
        else:
            want = (P - 1, *self.z1.shape)
            got = None if self.path_noise is None else tuple(self.path_noise.shape)
            assert got == want, f"path_noise must be (P-1, B, C, H, W) = {want}, got {got}"

    @property
    def num_paths(self) -> int:
        return self.fracs.shape[0]

    @property
    def num_points(self) -> int:
        return self.fracs.shape[1]


def draw(shape: Sequence[int], *, generator: torch.Generator | None = None, num_points: int = 6,
         num_paths: int = 1, weighting_scheme: Scheme = "logit_normal", logit_mean: float = 0.0,
         logit_std: float = 1.0, mode_scale: float = 1.29,
         device: torch.device | str | None = None) -> SoarDraws:
    """Draw one step's randomness for latents of `shape` = (B, C, H, W), in a fixed order:
    t0, z1, fracs, path_noise. `device` defaults to the generator's."""
    assert len(shape) >= 2, f"shape must be (B, C, H, W), got {tuple(shape)}"
    assert num_points >= 1 and num_paths >= 1, f"need K >= 1 and P >= 1, got K={num_points}, P={num_paths}"
    if device is None:
        device = generator.device if generator is not None else "cpu"
    B = shape[0]
    t0 = sample_t(B, weighting_scheme, generator=generator, device=device, logit_mean=logit_mean,
                  logit_std=logit_std, mode_scale=mode_scale)
    z1 = torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    fracs = torch.rand((num_paths, num_points, B), generator=generator, device=device, dtype=torch.float32)
    path_noise = None
    if num_paths > 1:
        path_noise = torch.randn((num_paths - 1, *shape), generator=generator, device=device,
                                 dtype=torch.float32)
    return SoarDraws(t0=t0, z1=z1, fracs=fracs, path_noise=path_noise)
