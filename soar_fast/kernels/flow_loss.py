"""Fused flow-matching loss: per-row `weight·mean((pred − target)²)` and its gradient w.r.t. pred.

`flow_loss_from_latents` recomputes the aux target `v_corr = (z' − z0[sample]) / σ'` inside both
kernels from the latents the model already read, so (N,C,H,W) float32 targets are never stored:
per step that saves writing and twice reading N·C·H·W·4 bytes. It differs from `flow_loss` on
materialised targets only by the rounding of z' to its storage dtype (none for float32 latents).

Forward: grid (row, block) writes one float32 partial per block and a second tiny kernel sums each
row's partials in a fixed order, so the loss is bitwise deterministic (no atomics) while the grid
still fills the GPU when N is small. Backward: `2·g·w/D·(pred − target)` elementwise, in pred's dtype.
"""

from __future__ import annotations

import torch

from soar_fast.kernels.dispatch import LIB, empty, launch_block, tl, triton, use_triton


@triton.jit
def _target(tgt_ptr, lat_ptr, z0_ptr, sp_ptr, idx_ptr, n, row, offs, mask, d, FROM_LATENTS: tl.constexpr):
    if FROM_LATENTS:
        s = tl.load(idx_ptr + n).to(tl.int64)
        lat = tl.load(lat_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        z0 = tl.load(z0_ptr + s * d + offs, mask=mask, other=0.0).to(tl.float32)
        tgt = (lat - z0) * tl.div_rn(1.0, tl.load(sp_ptr + n))  # same rounding as aux_points' targets
    else:
        tgt = tl.load(tgt_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    return tgt


@triton.jit
def _sq_err_partial_kernel(pred_ptr, tgt_ptr, lat_ptr, z0_ptr, sp_ptr, idx_ptr, part_ptr, d, n_blocks,
                           FROM_LATENTS: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    row = n.to(tl.int64) * d
    pred = tl.load(pred_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    tgt = _target(tgt_ptr, lat_ptr, z0_ptr, sp_ptr, idx_ptr, n, row, offs, mask, d, FROM_LATENTS)
    diff = tl.where(mask, pred - tgt, 0.0)
    tl.store(part_ptr + n * n_blocks + blk, tl.sum(diff * diff, axis=0))


@triton.jit
def _finish_kernel(part_ptr, w_ptr, out_ptr, n_blocks, inv_d, HAS_W: tl.constexpr, BLOCK_P: tl.constexpr,
                   N_ITER: tl.constexpr):
    # N_ITER = cdiv(n_blocks, BLOCK_P) is compile-time (1 below 4M elements per row): triton 3.6's
    # interpreter cannot take range() of a runtime scalar under numpy >= 2.4.
    n = tl.program_id(0)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for i in tl.static_range(N_ITER):
        offs = i * BLOCK_P + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + n * n_blocks + offs, mask=offs < n_blocks, other=0.0)
    loss = tl.sum(acc, axis=0) * inv_d
    if HAS_W:
        loss = loss * tl.load(w_ptr + n)
    tl.store(out_ptr + n, loss)


@triton.jit
def _grad_kernel(g_ptr, pred_ptr, tgt_ptr, lat_ptr, z0_ptr, sp_ptr, idx_ptr, w_ptr, out_ptr, d, two_over_d,
                 FROM_LATENTS: tl.constexpr, HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < d
    row = n.to(tl.int64) * d
    scale = tl.load(g_ptr + n) * two_over_d
    if HAS_W:
        scale = scale * tl.load(w_ptr + n)
    pred = tl.load(pred_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
    tgt = _target(tgt_ptr, lat_ptr, z0_ptr, sp_ptr, idx_ptr, n, row, offs, mask, d, FROM_LATENTS)
    tl.store(out_ptr + row + offs, (scale * (pred - tgt)).to(out_ptr.dtype.element_ty), mask=mask)


def latent_targets_reference(latents, z0, sigma_prime, sample_index):
    """v_corr = (z' − z0[sample]) / σ' in float32, rounded like aux_points (times 1/σ')."""
    col = (-1,) + (1,) * (latents.dim() - 1)
    return (latents.float() - z0.float()[sample_index.long()]) * (1.0 / sigma_prime.float()).view(col)


def flow_loss_reference(pred, target, weight=None):
    """Eager twin: per-row weight·mean((pred − target)²), float32, differentiable by torch autograd."""
    loss = (pred.float() - target.float()).square().flatten(1).mean(1)
    return loss if weight is None else loss * weight.float()


def flow_loss_grad_reference(grad, pred, target, weight):
    """Eager twin of the backward kernel: d(Σ grad_n·loss_n)/d pred, in pred's dtype."""
    scale = grad.float() * (2.0 / pred[0].numel())
    scale = scale if weight is None else scale * weight.float()
    return (scale.view((-1,) + (1,) * (pred.dim() - 1)) * (pred.float() - target.float())).to(pred.dtype)


def _sources(pred, target, latents, z0, sigma_prime, sample_index):
    """Kernel pointer arguments; `pred` stands in for the ones the FROM_LATENTS branch never reads."""
    sigma_prime = sigma_prime.float() if sigma_prime is not None else None
    return [t.contiguous() if t is not None else pred for t in (target, latents, z0, sigma_prime, sample_index)]


def _launch_loss(pred, target, latents, z0, sigma_prime, sample_index, weight):
    from_latents = latents is not None
    N, d = pred.shape[0], pred[0].numel()
    block = launch_block(d, cap=4096)  # reduction: more work per program, fewer partials
    n_blocks = triton.cdiv(d, block)
    part = torch.empty((N, n_blocks), dtype=torch.float32, device=pred.device)
    src = _sources(pred, target, latents, z0, sigma_prime, sample_index)
    _sq_err_partial_kernel[(N, n_blocks)](pred.contiguous(), *src, part, d, n_blocks,
                                          FROM_LATENTS=from_latents, BLOCK=block,
                                          num_warps=8 if block >= 4096 else 4)
    out = empty((N,), dtype=torch.float32, device=pred.device)
    w = weight.float().contiguous() if weight is not None else out
    block_p = min(1024, max(16, triton.next_power_of_2(n_blocks)))
    _finish_kernel[(N,)](part, w, out, n_blocks, 1.0 / d, HAS_W=weight is not None, BLOCK_P=block_p,
                         N_ITER=triton.cdiv(n_blocks, block_p))
    return out


def _launch_grad(grad, pred, target, latents, z0, sigma_prime, sample_index, weight):
    N, d = pred.shape[0], pred[0].numel()
    block = launch_block(d)
    out = empty(pred.shape, dtype=pred.dtype, device=pred.device)
    src = _sources(pred, target, latents, z0, sigma_prime, sample_index)
    w = weight.float().contiguous() if weight is not None else grad
    _grad_kernel[(N, triton.cdiv(d, block))](grad.float().contiguous(), pred.contiguous(), *src, w, out, d,
                                             2.0 / d, FROM_LATENTS=latents is not None,
                                             HAS_W=weight is not None, BLOCK=block)
    return out


@torch.library.custom_op(f"{LIB}::flow_loss", mutates_args=())
def _flow_loss_op(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if not use_triton(pred, _sq_err_partial_kernel) or pred.shape[0] == 0:
        return flow_loss_reference(pred, target, weight)
    return _launch_loss(pred, target, None, None, None, None, weight)


@torch.library.custom_op(f"{LIB}::flow_loss_backward", mutates_args=())
def _flow_loss_bwd_op(grad: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                      weight: torch.Tensor | None) -> torch.Tensor:
    if not use_triton(pred, _grad_kernel) or pred.shape[0] == 0:
        return flow_loss_grad_reference(grad, pred, target, weight)
    return _launch_grad(grad, pred, target, None, None, None, None, weight)


@torch.library.custom_op(f"{LIB}::flow_loss_latents", mutates_args=())
def _flow_loss_lat_op(pred: torch.Tensor, latents: torch.Tensor, z0: torch.Tensor, sigma_prime: torch.Tensor,
                      sample_index: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if not use_triton(pred, _sq_err_partial_kernel) or pred.shape[0] == 0:
        return flow_loss_reference(pred, latent_targets_reference(latents, z0, sigma_prime, sample_index), weight)
    return _launch_loss(pred, None, latents, z0, sigma_prime, sample_index, weight)


@torch.library.custom_op(f"{LIB}::flow_loss_latents_backward", mutates_args=())
def _flow_loss_lat_bwd_op(grad: torch.Tensor, pred: torch.Tensor, latents: torch.Tensor, z0: torch.Tensor,
                          sigma_prime: torch.Tensor, sample_index: torch.Tensor,
                          weight: torch.Tensor | None) -> torch.Tensor:
    if not use_triton(pred, _grad_kernel) or pred.shape[0] == 0:
        target = latent_targets_reference(latents, z0, sigma_prime, sample_index)
        return flow_loss_grad_reference(grad, pred, target, weight)
    return _launch_grad(grad, pred, None, latents, z0, sigma_prime, sample_index, weight)


def _fake_loss(pred, *args):
    return pred.new_empty((pred.shape[0],), dtype=torch.float32)


def _fake_grad(grad, pred, *args):
    return torch.empty_like(pred)


_flow_loss_op.register_fake(_fake_loss)
_flow_loss_lat_op.register_fake(_fake_loss)
_flow_loss_bwd_op.register_fake(_fake_grad)
_flow_loss_lat_bwd_op.register_fake(_fake_grad)


def _save_all(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _loss_backward(ctx, grad):
    pred, target, weight = ctx.saved_tensors
    g_pred = _flow_loss_bwd_op(grad, pred, target, weight)
    # Weights are σ-derived constants, never learned: no gradient, as in every flow-matching loss.
    g_target = -g_pred.to(target.dtype) if ctx.needs_input_grad[1] else None
    return (g_pred if ctx.needs_input_grad[0] else None), g_target, None


def _lat_backward(ctx, grad):
    pred, latents, z0, sigma_prime, sample_index, weight = ctx.saved_tensors
    if any(ctx.needs_input_grad[1:4]):
        raise NotImplementedError("flow_loss_from_latents: no gradient w.r.t. latents, z0 or sigma_prime "
                                  "(they are detached rollout outputs); use flow_loss for that")
    return _flow_loss_lat_bwd_op(grad, pred, latents, z0, sigma_prime, sample_index, weight), *[None] * 5


_flow_loss_op.register_autograd(_loss_backward, setup_context=_save_all)
_flow_loss_lat_op.register_autograd(_lat_backward, setup_context=_save_all)


def flow_loss(pred, target, weight=None):
    """Per-row `weight·mean((pred − target)²)`: pred/target (N, ...), weight (N,) or None -> (N,) float32.

    Differentiable w.r.t. pred (and target, as −grad rounded to target's dtype); weight is a constant.
    """
    if pred.shape != target.shape:
        raise ValueError(f"flow_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if weight is not None and weight.shape != (pred.shape[0],):
        raise ValueError(f"flow_loss: weight {tuple(weight.shape)} must be ({pred.shape[0]},)")
    return _flow_loss_op(pred, target, weight)


def flow_loss_from_latents(pred, latents, z0, sigma_prime, sample_index, weight=None):
    """`flow_loss(pred, (latents − z0[sample_index]) / sigma_prime, weight)` without storing the targets.

    pred, latents: (N,C,H,W); z0: (B,C,H,W); sigma_prime (N,) float32; sample_index (N,) int; weight (N,).
    """
    N = pred.shape[0]
    if latents.shape != pred.shape or tuple(z0.shape[1:]) != tuple(pred.shape[1:]):
        raise ValueError(f"flow_loss_from_latents: pred {tuple(pred.shape)}, latents {tuple(latents.shape)}, "
                         f"z0 {tuple(z0.shape)} must agree (z0 is per sample)")
    if sigma_prime.shape != (N,) or sample_index.shape != (N,) or (weight is not None and weight.shape != (N,)):
        raise ValueError(f"flow_loss_from_latents: sigma_prime {tuple(sigma_prime.shape)}, sample_index "
                         f"{tuple(sample_index.shape)} and weight must be ({N},)")
    return _flow_loss_lat_op(pred, latents, z0, sigma_prime, sample_index, weight)
