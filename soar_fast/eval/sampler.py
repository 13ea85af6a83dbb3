"""The SD3 flow-matching Euler sampler with classifier-free guidance.

Schedule: diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(S)` from the model's scheduler
config (shift 3.0 for SD3.5: σ = shift(linspace(1, 1/N·…, S)) then 0), so sampling matches
`StableDiffusion3Pipeline` step for step. Per step: one transformer forward on [uncond; cond] (2B rows,
the empty-prompt embedding as the negative), then the fused CFG + Euler step
`z ← z + (v_u + w·(v_c − v_u))·(σ_{i+1} − σ_i)` (`soar_fast.kernels.cfg_rollout`, kind "ode"). Latents stay in
float32 between steps (diffusers casts them back to the model dtype each step); the transformer sees
them in its own dtype. Initial noise is drawn per image from its own seed on the CPU, so an image
depends only on (model, prompt, seed, settings): not on its batch, rank or device count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from soar_fast.kernels.cfg_rollout import cfg_rollout

# f(latents [N,C,h,w], timesteps [N] float32 on the 0..1000 scale, prompt_embeds [N,L,D], pooled [N,P]) -> [N,C,h,w]
Velocity = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int], device: torch.device | str) -> torch.Tensor:
    """(B, C, h, w) float32 standard normal, row b drawn from a CPU generator seeded with `seeds[b]`."""
    rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
            for s in seeds]
    return torch.stack(rows).to(device)


def sampling_schedule(scheduler_config: dict[str, Any], steps: int, image_seq_len: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (S+1,) ending in 0, timesteps (S,)) float32 on the CPU, exactly the scheduler's.

    `image_seq_len` (latent tokens) only matters for configs with dynamic shifting (not SD3/SD3.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise ValueError(f"eval.steps must be >= 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", False):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        c = scheduler.config
        kwargs["mu"] = calculate_shift(image_seq_len, c.get("base_image_seq_len", 256),
                                       c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                       c.get("max_shift", 1.16))
    scheduler.set_timesteps(steps, device="cpu", **kwargs)
    return scheduler.sigmas.float(), scheduler.timesteps.float()


class FlowSampler:
    """`sample(noise, cond, uncond)` -> final latents; holds the schedule and the (maybe graphed) forward."""

    def __init__(self, velocity: Velocity, scheduler_config: dict[str, Any], *, steps: int, cfg_scale: float,
                 patch_size: int = 2) -> None:
        self.velocity = velocity
        self.scheduler_config = dict(scheduler_config)
        self.steps = int(steps)
        self.cfg_scale = float(cfg_scale)
        self.patch_size = int(patch_size)

    @property
    def guided(self) -> bool:
        """CFG runs when the scale exceeds 1 (the pipeline's rule); otherwise the conditional forward only."""
        return self.cfg_scale > 1.0

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
               null_embeds: torch.Tensor, null_pooled: torch.Tensor, *, model_dtype: torch.dtype | None = None
               ) -> torch.Tensor:
        """noise (B,C,h,w) float32; prompt_embeds (B,L,D), pooled (B,P); null_* (1,L,D), (1,P) -> latents float32."""
        b = noise.shape[0]
        assert prompt_embeds.shape[0] == b and pooled.shape[0] == b, (
            f"batch mismatch: noise {tuple(noise.shape)}, prompt_embeds {tuple(prompt_embeds.shape)}, "
            f"pooled {tuple(pooled.shape)}")
        dtype = model_dtype or prompt_embeds.dtype
        device = noise.device
        seq = (noise.shape[-2] // self.patch_size) * (noise.shape[-1] // self.patch_size)
        sigmas, timesteps = sampling_schedule(self.scheduler_config, self.steps, seq)
        # Per-step (B,) tables built on the host once: the loop itself never syncs.
        rows = 2 * b if self.guided else b
        sig = sigmas.to(device).unsqueeze(1).expand(-1, b).contiguous()
        taus = timesteps.to(device).unsqueeze(1).expand(-1, rows).contiguous()
        if self.guided:
            embeds = torch.cat([null_embeds.expand(b, -1, -1), prompt_embeds]).to(dtype)
            pooled_in = torch.cat([null_pooled.expand(b, -1), pooled]).to(dtype)
        else:
            embeds, pooled_in = prompt_embeds.to(dtype), pooled.to(dtype)
        z = noise.float()
        for i in range(self.steps):
            x = z.to(dtype)
            v = self.velocity(torch.cat([x, x]) if self.guided else x, taus[i], embeds, pooled_in)
            v_u, v_c = v.chunk(2) if self.guided else (v, v)
            z = cfg_rollout(z, v_u, v_c, sig[i], sig[i + 1], cfg_scale=self.cfg_scale if self.guided else 1.0,
                            kind="ode", noise_scale=0.0, sigma_hat_at_one=float(sigmas[1]))
        return z
