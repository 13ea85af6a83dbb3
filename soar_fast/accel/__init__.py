"""Accelerations of the SOAR step, one `[accel]` switch each, applied in one fixed order.

`resolve_accel(accel, device)` (`resolve.py`) decides every switch once, `accel.mode` included; the
functions below take the resolved switches (or resolve an `AccelConfig` themselves, for tests).

`apply_accelerations(transformer, accel, device)` applies the module switches, like torchtitan's
model assembly:

    attention backend  →  float8 Linear swap  →  activation checkpointing  →  per-block compile

float8 before checkpointing and compile so both see the final Linear modules; checkpointing
before compile so each compiled block contains its checkpoint (selective policies work inside
the graph). `accelerate_step_fns` swaps the step pieces into `StepFns`: fused CFG/aux-point and loss
kernels (`accel.fused_kernels`) and the CUDA-graphed rollout forward (`accel.cuda_graphs`).
`apply_accel(model, fns, accel, device=)`, the trainer's entry point, does both. The switches that
shape the step itself — `rollout_reuse_cond`, `batched_aux`/`aux_chunk`, `fuse_main_into_aux` — become
`StepOptions` in `soar_fast.train.step.step_options`; `optimizer` is read by
`soar_fast.train.optim.build_optimizer`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from soar_fast.config import AccelConfig

from .attention import apply_attention, attention_calls, resolve_attention
from .checkpointing import apply_checkpointing, reference_checkpointing
from .compile import apply_compile
from .cuda_graphs import GraphedForward, apply_cuda_graphs
from .float8 import apply_float8
from .flops import ForwardFlops, StepWork, forward_flops, step_flops
from .fused import fused_cfg_aux_fn, fused_step_pieces, kernel_name
from .resolve import ResolvedAccel, check_switches, resolve_accel

log = logging.getLogger(__name__)

__all__ = [
    "AccelReport",
    "ForwardFlops",
    "GraphedForward",
    "ResolvedAccel",
    "StepWork",
    "accelerate_step_fns",
    "apply_accel",
    "apply_accelerations",
    "apply_attention",
    "apply_checkpointing",
    "apply_compile",
    "apply_cuda_graphs",
    "apply_float8",
    "attention_calls",
    "check_switches",
    "forward_flops",
    "fused_cfg_aux_fn",
    "reference_checkpointing",
    "resolve_accel",
    "resolve_attention",
    "step_flops",
]


@dataclass
class AccelReport:
    """What `apply_accelerations` did, for logs and benchmark rows (`as_dict`).

    `attention` is the backend installed; `attention_ran` (in `as_dict`) is what the attention calls
    so far actually ran, counted per call, read when asked (after a step it names the kernel and dtype).
    """

    mode: str
    attention: str
    float8: str
    checkpointing: str
    compile: str
    cuda_graphs: bool
    rollout_reuse_cond: bool
    batched_aux: bool
    aux_chunk: int
    fuse_main_into_aux: bool
    fused_kernels: bool
    aux_kernel: str
    optimizer: str
    device: str = "cpu"
    attention_ran: Callable[[], str] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "attention_ran"}
        out["attention_ran"] = self.attention_ran() if self.attention_ran is not None else "not counted"
        return out

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items())


def apply_accelerations(transformer: torch.nn.Module, accel: AccelConfig | ResolvedAccel,
                        device: torch.device | str, *, aux_kernel_name: str | None = None,
                        float8_all_gather: bool = False) -> AccelReport:
    """Apply the module-level switches of `accel` to `transformer` in place.

    Call once, after the model is on `device` and in its training dtype, before building the
    optimizer (float8 swaps Linear modules but keeps their parameters).
    """
    device = torch.device(device)
    accel = resolve_accel(accel, device)
    attention = apply_attention(transformer, accel.attention, device, compiling=accel.compile)
    f8 = (apply_float8(transformer, accel.float8_recipe, device, fsdp_float8_all_gather=float8_all_gather)
          if accel.float8 else "off")
    ckpt = apply_checkpointing(transformer, accel.grad_checkpointing)
    fullgraph = "untraceable" not in attention
    compiled = apply_compile(transformer, fullgraph=fullgraph) if accel.compile else "off"
    report = AccelReport(
        mode=accel.mode, attention=attention, float8=f8, checkpointing=ckpt, compile=compiled,
        cuda_graphs=accel.cuda_graphs,
        rollout_reuse_cond=accel.rollout_reuse_cond, batched_aux=accel.batched_aux, aux_chunk=accel.aux_chunk,
        fuse_main_into_aux=accel.fuse_main_into_aux, fused_kernels=accel.fused_kernels,
        aux_kernel=(aux_kernel_name or accel.aux_kernel) if accel.fused_kernels else "off",
        optimizer=accel.optimizer, device=str(device), attention_ran=lambda: attention_calls(transformer))
    log.info("accelerations: %s", report.summary())
    return report


def accelerate_step_fns(fns: Any, accel: AccelConfig | ResolvedAccel,
                        device: torch.device | str) -> tuple[Any, str]:
    """`fns` (a `StepFns`) with the step-level switches applied; returns (fns, aux kernel name)."""
    device = torch.device(device)
    accel = resolve_accel(accel, device)
    changes: dict[str, Any] = {}
    kernel = "off"
    if accel.fused_kernels:
        changes.update(fused_step_pieces(accel.aux_kernel, device))
        kernel = kernel_name(accel.aux_kernel, device)
    if accel.cuda_graphs:
        changes["rollout_forward"], _ = apply_cuda_graphs(fns.rollout_forward, device)
    return (dataclasses.replace(fns, **changes) if changes else fns), kernel


def apply_accel(model: torch.nn.Module, fns: Any, accel: AccelConfig | ResolvedAccel, *,
                device: torch.device | str, float8_all_gather: bool = False) -> Any:
    """The trainer's hook: accelerate `model` in place and return the accelerated `StepFns`.

    `float8_all_gather`: the model will be FSDP2-sharded and should all-gather float8 weights
    (decided by the caller, which knows the parallel strategy). The report of what is on is logged
    and kept on the model as `soar_accel_report`.
    """
    accel = resolve_accel(accel, device)
    fns, aux_name = accelerate_step_fns(fns, accel, device)
    report = apply_accelerations(model, accel, device, aux_kernel_name=aux_name,
                                 float8_all_gather=float8_all_gather)
    # Not a parameter or buffer: invisible to state dicts and checkpoints.
    object.__setattr__(model, "soar_accel_report", report)
    return fns
