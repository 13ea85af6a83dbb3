"""Fused CFG combine + one rollout step (docs/objective.md §4).

`z' = step(z, v_u + w·(v_c − v_u), σ0, σ1)` in one pass: three reads, one write (two with
`return_v_cfg`), float32 math whatever the storage dtype. The evaluation sampler calls it with
kind="ode" as its CFG Euler step; the trainer's stochastic paths reuse `rollout_math` through
aux_points.py, so every kind's formula lives exactly once per backend (here).

Noise for the stochastic kinds is either passed in (`noise`, (B,C,H,W): exact, draw for draw
equal to the eager objective) or drawn in-kernel by Philox from (`seed`, `offset`): element i of
the flattened (B,C,H,W) tensor uses counter `offset + i`, so advance `offset` by `z.numel()` per
call for fresh noise. That stream is *not* torch.randn's, and the eager twin (CPU) draws from a
torch.Generator seeded from (seed, offset) instead: same distribution, different numbers.
"""

from __future__ import annotations

import math

import torch

from soar_fast.kernels.dispatch import LIB, empty, kind_code, launch_block, tl, triton, use_triton

NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2


@triton.jit
def rollout_math(z, v, eps, s0, s1, noise_scale, s_hat_one, KIND: tl.constexpr):
    """One rollout step in float32; `s0`, `s1` are this sample's σ0, σ1 (scalars).

    Every division and square root acts on per-sample scalars, so they use the IEEE-rounded
    div_rn/sqrt_rn (free here) rather than the approximate defaults: the coefficients then match
    the eager twin's bit for bit and only FMA contraction of the elementwise part can differ.
    """
    d = s1 - s0
    if KIND == 0:  # ode
        out = z + v * d
    elif KIND == 1:  # simple
        out = z + v * d + (noise_scale * tl.sqrt_rn(tl.abs(d))) * eps
    elif KIND == 2:  # sde
        out = (1.0 - s1) * (z - s0 * v) + s1 * eps
    elif KIND == 3:  # flow_sde: ŝ = grid σ_1 where σ0 == 1 keeps std finite
        s_hat = tl.where(s0 == 1.0, s_hat_one, s0)
        std = noise_scale * tl.sqrt_rn(tl.div_rn(s0, 1.0 - s_hat))
        var = std * std
        cz = 1.0 + tl.div_rn(var, 2.0 * s0) * d
        cv = (1.0 + tl.div_rn(var * (1.0 - s0), 2.0 * s0)) * d
        out = z * cz + v * cv + (std * tl.sqrt_rn(tl.maximum(-d, 0.0))) * eps
    else:  # cps
        std = s1 * tl.sin(noise_scale * 1.5707963267948966)
        c1 = tl.sqrt_rn(tl.maximum(s1 * s1 - std * std, 0.0))
        out = (1.0 - s1) * (z - s0 * v) + c1 * (z + (1.0 - s0) * v) + std * eps
    return out


@triton.jit
def _cfg_rollout_kernel(z_ptr, vu_ptr, vc_ptr, s0_ptr, s1_ptr, noise_ptr, out_ptr, vcfg_ptr,
                        cfg_scale, noise_scale, s_hat_one, seed, offset, chw,
                        KIND: tl.constexpr, NOISE: tl.constexpr, WRITE_V: tl.constexpr,
                        BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < chw
    idx = b.to(tl.int64) * chw + offs  # int64: B·C·H·W can pass 2^31 at large batch
    z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    vu = tl.load(vu_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    vc = tl.load(vc_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    v = vu + cfg_scale * (vc - vu)
    s0 = tl.load(s0_ptr + b)
    s1 = tl.load(s1_ptr + b)
    if NOISE == 1:
        eps = tl.load(noise_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        eps = tl.randn(seed, offset + idx)
    else:
        eps = tl.zeros_like(z)
    out = rollout_math(z, v, eps, s0, s1, noise_scale, s_hat_one, KIND)
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_V:
        tl.store(vcfg_ptr + idx, v, mask=mask)


def rollout_math_reference(z, v, eps, s0, s1, noise_scale: float, s_hat_one: float, kind: str):
    """Eager twin of `rollout_math`: float32 tensors, σ0/σ1 shaped (B,1,...) to broadcast."""
    d = s1 - s0
    if kind == "ode":
        return z + v * d
    if kind == "simple":
        return z + v * d + (noise_scale * d.abs().sqrt()) * eps
    if kind == "sde":
        return (1.0 - s1) * (z - s0 * v) + s1 * eps
    if kind == "flow_sde":
        s_hat = torch.where(s0 == 1.0, torch.full_like(s0, s_hat_one), s0)
        std = noise_scale * (s0 / (1.0 - s_hat)).sqrt()
        var = std * std
        cz = 1.0 + var / (2.0 * s0) * d
        cv = (1.0 + var * (1.0 - s0) / (2.0 * s0)) * d
        return z * cz + v * cv + (std * (-d).clamp_min(0.0).sqrt()) * eps
    if kind == "cps":
        std = s1 * math.sin(noise_scale * math.pi / 2)
        c1 = (s1 * s1 - std * std).clamp_min(0.0).sqrt()
        return (1.0 - s1) * (z - s0 * v) + c1 * (z + (1.0 - s0) * v) + std * eps
    raise ValueError(f"rollout kind {kind!r} is not one of ode, simple, sde, flow_sde, cps")


def _eager_noise(z: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    gen = torch.Generator(device=z.device)
    gen.manual_seed((seed + offset * 0x9E3779B97F4A7C15) % 2**64)  # distinct stream per (seed, offset)
    return torch.randn(z.shape, generator=gen, device=z.device, dtype=torch.float32)


def cfg_rollout_reference(z, v_uncond, v_cond, sigma0, sigma1, *, cfg_scale: float, kind: str,
                          noise_scale: float, noise=None, seed=None, offset: int = 0,
                          sigma_hat_at_one: float, return_v_cfg: bool = False):
    """Eager twin of `cfg_rollout` (same contract; Philox mode uses a torch.Generator stream)."""
    shape = (-1,) + (1,) * (z.dim() - 1)
    s0, s1 = sigma0.float().view(shape), sigma1.float().view(shape)
    v = v_uncond.float() + cfg_scale * (v_cond.float() - v_uncond.float())
    if kind == "ode":
        eps = None
    elif noise is not None:
        eps = noise.float()
    else:
        eps = _eager_noise(z, seed, offset)
    out = rollout_math_reference(z.float(), v, eps, s0, s1, noise_scale, sigma_hat_at_one, kind).to(z.dtype)
    return (out, v) if return_v_cfg else out


@torch.library.custom_op(f"{LIB}::cfg_rollout", mutates_args=())
def _cfg_rollout_op(z: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, sigma0: torch.Tensor,
                    sigma1: torch.Tensor, noise: torch.Tensor | None, cfg_scale: float, kind: str,
                    noise_scale: float, seed: int, offset: int, use_philox: bool,
                    sigma_hat_at_one: float, return_v_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not use_triton(z, _cfg_rollout_kernel):
        res = cfg_rollout_reference(z, v_uncond, v_cond, sigma0, sigma1, cfg_scale=cfg_scale, kind=kind,
                                    noise_scale=noise_scale, noise=noise, seed=seed, offset=offset,
                                    sigma_hat_at_one=sigma_hat_at_one, return_v_cfg=True)
        return res[0], (res[1] if return_v_cfg else res[1].new_empty(0))
    z, v_uncond, v_cond = z.contiguous(), v_uncond.contiguous(), v_cond.contiguous()
    mode = NOISE_NONE if kind == "ode" else (NOISE_PHILOX if use_philox else NOISE_TENSOR)
    noise = noise.contiguous() if mode == NOISE_TENSOR else z  # dummy pointer, never read
    out = empty(z.shape, dtype=z.dtype, device=z.device)
    v_cfg = empty(z.shape if return_v_cfg else (0,), dtype=torch.float32, device=z.device)
    chw = z[0].numel()
    block = launch_block(chw)
    grid = (z.shape[0], triton.cdiv(chw, block))
    _cfg_rollout_kernel[grid](z, v_uncond, v_cond, sigma0.float().contiguous(), sigma1.float().contiguous(),
                              noise, out, v_cfg if return_v_cfg else out, cfg_scale, noise_scale,
                              sigma_hat_at_one, seed, offset, chw, KIND=kind_code(kind), NOISE=mode,
                              WRITE_V=return_v_cfg, BLOCK=block)
    return out, v_cfg


@_cfg_rollout_op.register_fake
def _(z, v_uncond, v_cond, sigma0, sigma1, noise, cfg_scale, kind, noise_scale, seed, offset, use_philox,
      sigma_hat_at_one, return_v_cfg):
    return torch.empty_like(z), z.new_empty(z.shape if return_v_cfg else (0,), dtype=torch.float32)


def cfg_rollout(z, v_uncond, v_cond, sigma0, sigma1, *, cfg_scale: float, kind: str, noise_scale: float,
                noise=None, seed=None, offset: int = 0, sigma_hat_at_one: float, return_v_cfg: bool = False):
    """`rollout_step(z, v_u + w·(v_c − v_u), σ0, σ1, kind)` fused; no autograd (the rollout is stop-grad).

    z, v_uncond, v_cond: (B,C,H,W) same shape, any float dtype; sigma0, sigma1: (B,) float32.
    Stochastic kinds need `noise` (B,C,H,W) or an int `seed` (in-kernel Philox, see module doc).
    Returns z' in z.dtype, or (z', v_cfg float32) with `return_v_cfg`.
    """
    kind_code(kind)
    B = z.shape[0]
    if v_uncond.shape != z.shape or v_cond.shape != z.shape:
        raise ValueError(f"cfg_rollout: z {tuple(z.shape)}, v_uncond {tuple(v_uncond.shape)} and "
                         f"v_cond {tuple(v_cond.shape)} must match")
    if sigma0.shape != (B,) or sigma1.shape != (B,):
        raise ValueError(f"cfg_rollout: sigma0 {tuple(sigma0.shape)} / sigma1 {tuple(sigma1.shape)} "
                         f"must be ({B},)")
    if noise is not None and noise.shape != z.shape:
        raise ValueError(f"cfg_rollout: noise {tuple(noise.shape)} must match z {tuple(z.shape)}")
    use_philox = kind != "ode" and noise is None
    if use_philox and seed is None:
        raise ValueError(f"cfg_rollout: kind={kind!r} needs `noise` or an int `seed`")
    out, v_cfg = _cfg_rollout_op(z, v_uncond, v_cond, sigma0, sigma1, noise, float(cfg_scale), kind,
                                 float(noise_scale), int(seed or 0), int(offset), use_philox,
                                 float(sigma_hat_at_one), bool(return_v_cfg))
    return (out, v_cfg) if return_v_cfg else out
