"""One SOAR training step (docs/objective.md §3), in order, as one function: `soar_step`.

batch → z_t0 → main forward (grad) → rollout forward (no grad) → CFG + aux points → aux forward(s)
→ loss → backward. The optimizer step is the trainer's (it also owns clipping and accumulation).
`soar.objective = "sft"` is the same step stopped after the main forward: plain flow matching.

Accelerations do not fork this function: they replace the pieces in `StepFns` (a compiled or
CUDA-graphed rollout forward, fused CFG/aux-point and loss kernels) and set `StepOptions`; with the
defaults below the step is the eager objective of `soar_fast.soar`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from soar_fast.config import SoarConfig
from soar_fast.soar import AuxPoints, LossParts, SigmaGrid, SoarDraws, aux_points, cfg_combine, loss_weight
from soar_fast.soar.loss import Count, normaliser, soar_loss, weighted_mse
from soar_fast.soar.reference import Model
from soar_fast.train.phases import phase

if TYPE_CHECKING:
    from soar_fast.accel.resolve import ResolvedAccel

# (z_t0, v_uncond, v_cond, z0, draws, grid, soar_cfg) -> AuxPoints
CfgAux = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, SoarDraws, SigmaGrid, SoarConfig],
                  AuxPoints]
# (pred [N,...], target [N,...], weight [N]) -> per-sample weighted MSE [N] float32, differentiable
FlowLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# (pred [n,...], pts, rows, z0 [B,...], weight [n]) -> per-row weighted MSE of the aux rows `rows` [n] float32
AuxLoss = Callable[[torch.Tensor, AuxPoints, slice, torch.Tensor, torch.Tensor], torch.Tensor]
# (this rank's n_main, n_aux) -> (the counts over all ranks)
GlobalCounts = Callable[[int, int], tuple[Count, Count]]


def eager_cfg_aux(z_t0: torch.Tensor, v_uncond: torch.Tensor, v_cond: torch.Tensor, z0: torch.Tensor,
                  draws: SoarDraws, grid: SigmaGrid, soar: SoarConfig) -> AuxPoints:
    """CFG combine + aux points, the eager way (`soar_fast/kernels/aux_points.py` fuses both)."""
    v_cfg = cfg_combine(v_uncond, v_cond, soar.cfg_scale)
    return aux_points(z_t0, v_cfg, z0, draws.z1, draws.t0, grid, num_sampling_steps=soar.num_sampling_steps,
                      fracs=draws.fracs, noise=draws.path_noise, kind=soar.rollout_kind,
                      noise_scale=soar.noise_scale, sigma_upper_ratio=soar.sigma_upper_ratio,
                      timestep_mode=soar.timestep_mode)


def stored_target_loss(pred: torch.Tensor, pts: AuxPoints, rows: slice, z0: torch.Tensor,
                       weight: torch.Tensor) -> torch.Tensor:
    """Aux loss against the stored targets (the fused kernels recompute them from the latents instead)."""
    return weighted_mse(pred, pts.targets[rows], weight)


@dataclass
class StepFns:
    """The replaceable pieces of the step. `forward` carries gradients (main and aux forwards);
    `rollout_forward` is the no-grad CFG forward, the natural target of compile + CUDA graphs."""

    forward: Model
    rollout_forward: Model
    cfg_aux: CfgAux = eager_cfg_aux
    flow_loss: FlowLoss = weighted_mse
    aux_loss: AuxLoss = stored_target_loss


@dataclass(frozen=True)
class StepOptions:
    """How the step runs; none of these changes the objective (up to float rounding)."""

    reuse_cond: bool = True
    """v_c := v0.detach() instead of a conditional rollout forward (they are the same computation)."""
    rollout_grad: bool = False
    """Run the rollout forward with autograd on (the reference's cost; numbers unchanged)."""
    serial_aux: bool = False
    """One aux forward per (path, point) like the reference, instead of one batched forward."""
    aux_chunk: int = 0
    """Largest aux forward in rows (0 = all rows at once); each chunk is backpropagated at once,
    which is exact because the normaliser is known before the first chunk."""
    fuse_main: bool = False
    """The main rows ride in front of the first aux forward (B + aux_chunk rows, or B + all aux rows)
    instead of a forward of their own; needs the conditional CFG branch from the rollout forward
    (`reuse_cond = False`) and batched aux forwards (`serial_aux = False`)."""
    autocast_dtype: torch.dtype | None = None
    """bf16 autocast of the forwards (`train.mixed_precision`); None = full precision."""

    def __post_init__(self) -> None:
        if self.fuse_main and (self.reuse_cond or self.serial_aux):
            raise ValueError("StepOptions: fuse_main needs reuse_cond=False and serial_aux=False")


def step_options(accel: ResolvedAccel, *, mixed_precision: str = "no") -> StepOptions:
    """The resolved `[accel]` switches that shape the step (`soar_fast.accel.resolve_accel` decides
    them, `accel.mode` included), with `train.mixed_precision`."""
    return StepOptions(reuse_cond=accel.rollout_reuse_cond, rollout_grad=accel.rollout_grad,
                       serial_aux=not accel.batched_aux, aux_chunk=accel.aux_chunk,
                       fuse_main=accel.fuse_main_into_aux,
                       autocast_dtype=torch.bfloat16 if mixed_precision == "bf16" else None)


@dataclass(frozen=True)
class MainRows:
    """The main batch: model inputs (z_t0, τ0, prompt_embeds, pooled), target z1 − z0, loss weight [B]."""

    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    target: torch.Tensor
    weight: torch.Tensor

    @property
    def size(self) -> int:
        return self.target.shape[0]


@dataclass(frozen=True)
class BackwardPlan:
    """Where the step's gradients are computed, all in this one place.

    Without aux chunks: one backward of `loss_scale · loss` at the end. With `aux_chunk` (batched):
    the normaliser is known before the first aux forward, so each chunk is backpropagated as soon as
    it is computed and its activations freed (exact: the loss is linear in chunk sums); the main
    term goes back at the end, or with the chunk it rode in under `fuse_main` (they share a graph).
    """

    per_chunk: bool
    fused_main: bool
    loss_scale: float
    norm: Count
    lambda_aux: float

    @classmethod
    def of(cls, opts: StepOptions, *, loss_scale: float, norm: Count, lambda_aux: float) -> BackwardPlan:
        return cls(per_chunk=opts.aux_chunk > 0 and not opts.serial_aux, fused_main=opts.fuse_main,
                   loss_scale=loss_scale, norm=norm, lambda_aux=lambda_aux)

    def chunk(self, aux_part: torch.Tensor, main_sum: torch.Tensor | None) -> torch.Tensor:
        """One aux chunk's loss sum (plus the fused main's): backpropagated now when planned per
        chunk (then returned detached), else returned as is for the final backward."""
        if not self.per_chunk:
            return aux_part
        chunk_sum = self.lambda_aux * aux_part + (main_sum if main_sum is not None else 0.0)
        with phase("backward"):
            (chunk_sum * (self.loss_scale / self.norm)).backward()
        return aux_part.detach()

    def finish(self, loss: torch.Tensor, main_sum: torch.Tensor) -> None:
        """What is left after the aux forwards: the whole loss, or the main term alone."""
        with phase("backward"):
            if not self.per_chunk:
                (loss * self.loss_scale).backward()
            elif not self.fused_main:
                (main_sum * (self.loss_scale / self.norm)).backward()


def _aux_slices(pts: AuxPoints, opts: StepOptions) -> list[slice]:
    n = pts.layout.num_rows
    if opts.serial_aux:
        sizes = [rows for rows in pts.layout.rows_per_path for _ in range(pts.layout.num_points)]
    else:
        chunk = opts.aux_chunk or n
        sizes = [min(chunk, n - start) for start in range(0, n, chunk)]
    slices, start = [], 0
    for size in sizes:
        if size > 0:
            slices.append(slice(start, start + size))
        start += size
    return slices


def rollout_velocities(fns: StepFns, opts: StepOptions, autocast, main: MainRows, v0: torch.Tensor | None,
                       null_embeds: torch.Tensor, null_pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_uncond, v_cond), detached: one no-grad rollout forward, over [uncond; cond] unless v_cond
    is the main forward's own output (`reuse_cond`)."""
    z_t0, tau0, prompt_embeds, pooled = main.inputs
    null_e = null_embeds.expand(main.size, *null_embeds.shape[1:])
    null_p = null_pooled.expand(main.size, *null_pooled.shape[1:])
    with torch.set_grad_enabled(opts.rollout_grad), autocast:
        if opts.reuse_cond:
            v_uncond, v_cond = fns.rollout_forward(z_t0, tau0, null_e, null_p), v0
        else:
            v_both = fns.rollout_forward(torch.cat([z_t0, z_t0]), torch.cat([tau0, tau0]),
                                         torch.cat([null_e, prompt_embeds]), torch.cat([null_p, pooled]))
            v_uncond, v_cond = v_both.chunk(2)
    return v_uncond.detach(), v_cond.detach()


def aux_forwards(fns: StepFns, opts: StepOptions, autocast, pts: AuxPoints, main: MainRows,
                 v0: torch.Tensor | None, z0: torch.Tensor, scheme: str,
                 plan: BackwardPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The aux forward(s), with grad, one per slice of `_aux_slices`; returns (per-sample main loss [B],
    aux loss sum). `v0` None (`fuse_main`): the main rows ride in front of the first aux forward. `z0`
    (B, C, H, W): for an aux loss that recomputes the targets from the latents."""
    _, _, prompt_embeds, pooled = main.inputs
    main_loss = None if v0 is None else fns.flow_loss(v0, main.target, main.weight)
    aux_sum = pts.latents.new_zeros((), dtype=torch.float32)
    for rows in _aux_slices(pts, opts):
        b = pts.sample_index[rows]
        inputs = (pts.latents[rows], pts.timesteps[rows], prompt_embeds[b], pooled[b])
        # Fused main: one larger grad forward instead of two (fewer launches, taller GEMMs on a GPU),
        # paid for by the conditional rollout half that `reuse_cond` would have saved. Off by default.
        with_main = main_loss is None
        if with_main:
            inputs = tuple(torch.cat(pair) for pair in zip(main.inputs, inputs))
        with autocast:
            pred = fns.forward(*inputs)
        if with_main:
            v0, pred = pred.split([main.size, pred.shape[0] - main.size])
            main_loss = fns.flow_loss(v0, main.target, main.weight)
        part = fns.aux_loss(pred, pts, rows, z0, loss_weight(pts.sigmas[rows], scheme)).sum()
        aux_sum = aux_sum + plan.chunk(part, main_loss.sum() if with_main else None)
    return main_loss, aux_sum


def soar_step(fns: StepFns, z0: torch.Tensor, prompt_embeds: torch.Tensor, pooled: torch.Tensor,
              null_embeds: torch.Tensor, null_pooled: torch.Tensor, draws: SoarDraws, grid: SigmaGrid,
              soar: SoarConfig, opts: StepOptions, *, loss_scale: float = 1.0,
              global_counts: GlobalCounts | None = None) -> LossParts:
    """Forward and backward of one micro-batch; returns its detached `LossParts`.

    z0: (B, C, H, W) float32 clean latents (already sampled from the posterior). prompt_embeds (B, L, D),
    pooled (B, P); null_embeds (1, L, D), null_pooled (1, P): the empty prompt. Gradients of
    `loss_scale · loss` are accumulated into the parameters (loss_scale = 1 / accumulation steps,
    times the world size under gradient-averaging data parallelism). `global_counts(n_main, n_aux)`
    turns this rank's counts into the counts over all ranks (an all-reduce, as a device tensor: no
    host sync); None = one process.
    """
    autocast = (torch.autocast(z0.device.type, dtype=opts.autocast_dtype) if opts.autocast_dtype
                else contextlib.nullcontext())

    # 1. z_t0 on the grid point of t0 (float32 sigma, unlike the reference's bf16 rounding).
    sigma0, tau0 = grid.at(draws.t0)
    s0 = sigma0.view(-1, *([1] * (z0.ndim - 1)))
    z_t0 = (1 - s0) * z0 + s0 * draws.z1

    # 2. Main forward, with grad: the plain flow-matching loss towards z1 − z0. With `fuse_main` these
    # rows run in front of the first aux forward instead (step 5).
    main = MainRows((z_t0, tau0, prompt_embeds, pooled), draws.z1 - z0, loss_weight(sigma0, soar.weighting_scheme))
    sft = soar.objective == "sft"
    v0 = None
    if not opts.fuse_main or sft:  # SFT has no aux forward to fuse the main rows into
        with autocast:
            v0 = fns.forward(*main.inputs)
    # SFT (`soar.objective = "sft"`) ends here: the main loss and its backward, none of steps 3-5.
    if sft:
        return flow_matching_step(fns, main, v0, loss_scale=loss_scale, global_counts=global_counts)

    # 3. Rollout forward, no grad. v_cond is the main forward's own output when reused.
    v_uncond, v_cond = rollout_velocities(fns, opts, autocast, main, v0, null_embeds, null_pooled)

    # 4. CFG + aux points (the eager path syncs once here to count rows).
    pts = fns.cfg_aux(z_t0, v_uncond, v_cond, z0, draws, grid, soar)

    # 5. Aux forward(s), with grad, and the main loss; chunks may go back as they come (`BackwardPlan`).
    n_main, n_aux = main.size, pts.layout.num_rows
    if global_counts is not None:
        n_main, n_aux = global_counts(n_main, n_aux)
    backward = BackwardPlan.of(opts, loss_scale=loss_scale, norm=normaliser(n_main, n_aux, soar.lambda_aux),
                               lambda_aux=soar.lambda_aux)
    main_loss, aux_sum = aux_forwards(fns, opts, autocast, pts, main, v0, z0, soar.weighting_scheme, backward)

    # 6. Loss: the mean over every supervision item of every rank.
    main_sum = main_loss.sum()
    loss = soar_loss(main_sum, aux_sum, n_main, n_aux, soar.lambda_aux)

    # 7. Backward, what the plan left for the end (`phase`: a named range for `soar-fast profile`; the
    # other phases are named by wrapping StepFns there).
    backward.finish(loss, main_sum)
    # Logged parts are this rank's shares of the global values (its sums over the global counts): one
    # process logs its means; with several, the loop sums the shares over ranks on log steps, giving
    # the global loss and mean items (the reference logs the shares alone: ≈ means / W; docs/objective.md §5).
    return LossParts(loss=loss.detach(), loss_main=main_sum.detach() / normaliser(n_main, 0, 0.0),
                     loss_aux=aux_sum.detach() / normaliser(0, n_aux, 1.0), n_main=n_main, n_aux=n_aux)


def flow_matching_step(fns: StepFns, main: MainRows, v0: torch.Tensor, *, loss_scale: float,
                       global_counts: GlobalCounts | None) -> LossParts:
    """The SFT step's end (`soar.objective = "sft"`): the main loss, the mean over the global batch,
    and its backward; no rollout, no aux forward. `loss_aux` is 0 over `n_aux = 0` items."""
    main_sum = fns.flow_loss(v0, main.target, main.weight).sum()
    n_main = main.size if global_counts is None else global_counts(main.size, 0)[0]
    loss = main_sum / normaliser(n_main, 0, 0.0)
    with phase("backward"):
        (loss * loss_scale).backward()
    loss = loss.detach()
    return LossParts(loss=loss, loss_main=loss, loss_aux=torch.zeros_like(loss), n_main=n_main, n_aux=0)


def drop_conditions(prompt_embeds: torch.Tensor, pooled: torch.Tensor, null_embeds: torch.Tensor,
                    null_pooled: torch.Tensor, rate: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample conditional dropout: each sample trains on the empty prompt with probability `rate`
    (the reference drops the whole batch at once). Always draws B uniforms so the stream advances
    the same way whatever the outcome."""
    keep = torch.rand(prompt_embeds.shape[0], generator=generator, device=generator.device) >= rate
    keep = keep.to(prompt_embeds.device)
    embeds = torch.where(keep.view(-1, 1, 1), prompt_embeds, null_embeds.to(prompt_embeds.dtype))
    return embeds, torch.where(keep.view(-1, 1), pooled, null_pooled.to(pooled.dtype))
