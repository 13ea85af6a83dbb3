"""Fused CFG + rollout + re-noise + targets over every aux point (docs/objective.md §3, step 4).

One program owns (sample b, a block of C·H·W elements): it reads z_t0, v_u, v_c, z0, z1 once (plus
its path noise), forms v_cfg, the ODE endpoint (path 0) and the `kind` endpoint of every stochastic
path, and writes every aux latent z' and target v_corr of that sample, P·K rows, from registers.
Eager, the same work reads z1' and z1 back once per point: ~(3 + 2·P·K) full-size reads versus 5 + P−1.

Which output row each (sample, path, point) goes to is the host-computed `row_table` (B,P,K) int32
(−1 = left out: stochastic paths skip samples with t1 <= 0), so the kernel has no boundary logic and
the output order is whatever `soar_fast.soar.aux_layout` decided (path-major, point, sample).
Rows must cover 0..N−1 exactly once; unreferenced rows would be left unwritten.

dtypes: float32 math; latents stored in `out_dtype or z_t0.dtype`; targets float32 unless `out_dtype`
is given (a target divides by σ' down to ~0.003, so rounding z' to bf16 first would amplify the
error ~300×; the target is computed from the float32 z', never from the stored one).
"""

from __future__ import annotations

import torch

from soar_fast.kernels.cfg_rollout import rollout_math, rollout_math_reference
from soar_fast.kernels.dispatch import LIB, empty, kind_code, launch_block, tl, triton, use_triton


@triton.jit
def _write_points(z1p, z1, z0, s1, inv_span, table_ptr, sp_ptr, lat_ptr, tgt_ptr, row_base, chw, offs, mask,
                  K: tl.constexpr, WRITE_TARGETS: tl.constexpr):
    """Re-noise one path endpoint towards z1 at K points and store latents and targets."""
    for k in tl.static_range(K):
        row = tl.load(table_ptr + row_base + k)
        sp = tl.load(sp_ptr + tl.maximum(row, 0))  # row −1 loads row 0's σ' and stores nothing
        alpha = tl.minimum(tl.maximum((sp - s1) * inv_span, 0.0), 1.0)
        zp = (1.0 - alpha) * z1p + alpha * z1
        # Compare as a vector: triton 3.9's interpreter rejects a mask built from a scalar predicate.
        m = mask & ((tl.zeros_like(offs) + row) >= 0)
        dst = row.to(tl.int64) * chw + offs
        tl.store(lat_ptr + dst, zp.to(lat_ptr.dtype.element_ty), mask=m)
        if WRITE_TARGETS:
            tgt = (zp - z0) * tl.div_rn(1.0, sp)  # IEEE reciprocal: the eager twin's `1.0 / sp`
            tl.store(tgt_ptr + dst, tgt.to(tgt_ptr.dtype.element_ty), mask=m)


@triton.jit
def _aux_points_kernel(z_ptr, vu_ptr, vc_ptr, z0_ptr, z1_ptr, s0_ptr, s1_ptr, sp_ptr, table_ptr, noise_ptr,
                       lat_ptr, tgt_ptr, cfg_scale, noise_scale, s_hat_one, B, chw,
                       P: tl.constexpr, K: tl.constexpr, KIND: tl.constexpr, WRITE_TARGETS: tl.constexpr,
                       BLOCK: tl.constexpr):
    # P and K are compile-time: the loops unroll (every store straight from registers), and triton
    # 3.6's interpreter cannot take range() of a runtime scalar under numpy >= 2.4 (it calls int()
    # on a 1-element array). Each (P, K) compiles once; a run keeps one.
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < chw
    idx = b.to(tl.int64) * chw + offs
    z = tl.load(z_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    vu = tl.load(vu_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    vc = tl.load(vc_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    z0 = tl.load(z0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    z1 = tl.load(z1_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    v = vu + cfg_scale * (vc - vu)
    s0 = tl.load(s0_ptr + b)
    s1 = tl.load(s1_ptr + b)
    inv_span = tl.div_rn(1.0, tl.maximum(1.0 - s1, 1e-8))
    z1p = rollout_math(z, v, z, s0, s1, noise_scale, s_hat_one, 0)  # path 0: ODE, noise unused
    _write_points(z1p, z1, z0, s1, inv_span, table_ptr, sp_ptr, lat_ptr, tgt_ptr, b * P * K, chw, offs, mask,
                  K, WRITE_TARGETS)
    for p in tl.static_range(1, P):
        nidx = ((p - 1) * B + b).to(tl.int64) * chw + offs
        eps = tl.load(noise_ptr + nidx, mask=mask, other=0.0).to(tl.float32)
        z1p = rollout_math(z, v, eps, s0, s1, noise_scale, s_hat_one, KIND)
        _write_points(z1p, z1, z0, s1, inv_span, table_ptr, sp_ptr, lat_ptr, tgt_ptr, (b * P + p) * K, chw,
                      offs, mask, K, WRITE_TARGETS)


def aux_outputs(z_t0: torch.Tensor, sigma_prime: torch.Tensor, out_dtype: torch.dtype | None,
                with_targets: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The (latents, targets) buffers every implementation fills: (N, C, H, W) with N = len(σ');
    latents in `out_dtype or z_t0.dtype`, targets in `out_dtype or float32`. Without targets the
    second buffer is a (0,) placeholder (a custom op returns tensors only)."""
    shape = (sigma_prime.shape[0],) + tuple(z_t0.shape[1:])
    latents = empty(shape, dtype=out_dtype or z_t0.dtype, device=z_t0.device)
    if not with_targets:
        return latents, _no_targets(latents)
    return latents, empty(shape, dtype=out_dtype or torch.float32, device=z_t0.device)


def _no_targets(latents: torch.Tensor) -> torch.Tensor:
    return latents.new_empty((0,), dtype=torch.float32)


def fused_aux_points_reference(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                               path_noise, *, cfg_scale: float, kind: str, noise_scale: float,
                               sigma_hat_at_one: float, out_dtype=None, with_targets: bool = True):
    """Eager twin of `fused_aux_points` (float32 math; gathers rows with a host sync, fine on CPU)."""
    P = row_table.shape[1]
    col = (-1,) + (1,) * (z_t0.dim() - 1)
    s0, s1 = sigma0.float().view(col), sigma1.float().view(col)
    z, z0f, z1f = z_t0.float(), z0.float(), z1.float()
    v = v_uncond.float() + cfg_scale * (v_cond.float() - v_uncond.float())
    ends = [rollout_math_reference(z, v, None, s0, s1, noise_scale, sigma_hat_at_one, "ode")]
    for p in range(1, P):
        ends.append(rollout_math_reference(z, v, path_noise[p - 1].float(), s0, s1, noise_scale,
                                           sigma_hat_at_one, kind))
    table = row_table.permute(1, 2, 0)  # (P,K,B): iterate in output order
    if P == 1:  # every row exists (as in `aux_layout`): no host sync, and shapes known without values
        B, K = row_table.shape[0], row_table.shape[2]
        b_idx = torch.arange(B, device=z_t0.device).repeat(K)
        p_idx = torch.zeros_like(b_idx)
        rows = table.reshape(-1).long()
    else:
        p_idx, _, b_idx = (table >= 0).nonzero(as_tuple=True)
        rows = table[table >= 0].long()
    sp = sigma_prime.float()[rows].view(col)
    alpha = ((sp - s1[b_idx]) * (1.0 / (1.0 - s1[b_idx]).clamp_min(1e-8))).clamp(0.0, 1.0)
    zp = (1.0 - alpha) * torch.stack(ends)[p_idx, b_idx] + alpha * z1f[b_idx]
    latents, targets = aux_outputs(z_t0, sigma_prime, out_dtype, with_targets)
    latents[rows] = zp.to(latents.dtype)
    if not with_targets:
        return latents, None
    targets[rows] = ((zp - z0f[b_idx]) * (1.0 / sp)).to(targets.dtype)
    return latents, targets


@torch.library.custom_op(f"{LIB}::aux_points", mutates_args=())
def _aux_points_op(z_t0: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, z0: torch.Tensor,
                   z1: torch.Tensor, sigma0: torch.Tensor, sigma1: torch.Tensor, sigma_prime: torch.Tensor,
                   row_table: torch.Tensor, path_noise: torch.Tensor | None, cfg_scale: float, kind: str,
                   noise_scale: float, sigma_hat_at_one: float, out_dtype: torch.dtype | None,
                   with_targets: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # Without targets the second output is aux_outputs' (0,) placeholder.
    args = (z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise)
    opts = {"cfg_scale": cfg_scale, "kind": kind, "noise_scale": noise_scale,
            "sigma_hat_at_one": sigma_hat_at_one, "out_dtype": out_dtype, "with_targets": with_targets}
    N = sigma_prime.shape[0]
    if not use_triton(z_t0, _aux_points_kernel) or N == 0:  # N == 0: nothing to write, no σ' to load
        latents, targets = fused_aux_points_reference(*args, **opts)
        return latents, targets if with_targets else _no_targets(latents)
    B, P, K = row_table.shape
    chw = z_t0[0].numel()
    latents, targets = aux_outputs(z_t0, sigma_prime, out_dtype, with_targets)
    block = launch_block(chw)
    c = [t.contiguous() for t in (z_t0, v_uncond, v_cond, z0, z1)]
    noise = path_noise.contiguous() if P > 1 else c[0]  # dummy pointer when there is no stochastic path
    _aux_points_kernel[(B, triton.cdiv(chw, block))](
        *c, sigma0.float().contiguous(), sigma1.float().contiguous(), sigma_prime.float().contiguous(),
        row_table.to(torch.int32).contiguous(), noise, latents, targets, cfg_scale, noise_scale,
        sigma_hat_at_one, B, chw, P=P, K=K, KIND=kind_code(kind), WRITE_TARGETS=with_targets, BLOCK=block)
    return latents, targets


def aux_points_fake(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise, cfg_scale,
                    kind, noise_scale, sigma_hat_at_one, out_dtype, with_targets=True):
    """The fake (shapes and dtypes only, for torch.compile) of every aux-points op: this one and
    the CUDA C++ twin's (`cuda_aux.py`, which always writes targets)."""
    return aux_outputs(z_t0, sigma_prime, out_dtype, with_targets)


_aux_points_op.register_fake(aux_points_fake)


def check_aux_shapes(who: str, z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                     path_noise) -> int:
    """The argument shapes every implementation of the aux kernel requires (`who` names it in the
    error); returns the number of paths P."""
    shape = tuple(z_t0.shape)
    for name, t in (("v_uncond", v_uncond), ("v_cond", v_cond), ("z0", z0), ("z1", z1)):
        if tuple(t.shape) != shape:
            raise ValueError(f"{who}: {name} {tuple(t.shape)} must match z_t0 {shape}")
    if row_table.dim() != 3 or row_table.shape[0] != shape[0]:
        raise ValueError(f"{who}: row_table {tuple(row_table.shape)} must be ({shape[0]}, P, K)")
    B, P, _ = row_table.shape
    if sigma0.shape != (B,) or sigma1.shape != (B,) or sigma_prime.dim() != 1:
        raise ValueError(f"{who}: sigma0 {tuple(sigma0.shape)}, sigma1 {tuple(sigma1.shape)} must "
                         f"be ({B},), sigma_prime {tuple(sigma_prime.shape)} must be (N,)")
    if P > 1 and (path_noise is None or tuple(path_noise.shape) != (P - 1,) + shape):
        got = None if path_noise is None else tuple(path_noise.shape)
        raise ValueError(f"{who}: path_noise {got} must be {(P - 1,) + shape} for P={P}")
    return P


def fused_aux_points(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table, path_noise, *,
                     cfg_scale: float, kind: str, noise_scale: float, sigma_hat_at_one: float,
                     out_dtype: torch.dtype | None = None, with_targets: bool = True):
    """All aux latents z' and targets v_corr of one step; no autograd (rollout and targets are stop-grad).

    z_t0, v_uncond, v_cond, z0, z1: (B,C,H,W); sigma0, sigma1: (B,) float32; sigma_prime: (N,) float32;
    row_table: (B,P,K) int32 output row or −1; path_noise: (P−1,B,C,H,W) or None when P == 1.
    Returns latents (N,C,H,W) in `out_dtype or z_t0.dtype`, targets (N,C,H,W) in `out_dtype or float32`.
    `with_targets=False` skips writing the targets (returned as None) for a loss that recomputes them
    from the latents (`soar_fast.kernels.flow_loss.flow_loss_from_latents`): N·C·H·W·4 bytes less written.
    """
    kind_code(kind)
    P = check_aux_shapes("fused_aux_points", z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime,
                         row_table, path_noise)
    latents, targets = _aux_points_op(z_t0, v_uncond, v_cond, z0, z1, sigma0, sigma1, sigma_prime, row_table,
                                      path_noise if P > 1 else None, float(cfg_scale), kind, float(noise_scale),
                                      float(sigma_hat_at_one), out_dtype, bool(with_targets))
    return latents, targets if with_targets else None
