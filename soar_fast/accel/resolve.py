"""What `[accel]` means on one device, decided once: `resolve_accel(accel, device) -> ResolvedAccel`.

This is the one place that reads `accel.mode`. `reference` means the reference's own setting, whatever
the other switches say: grad-enabled [uncond; cond] rollout, K serial aux forwards, diffusers' full
gradient checkpointing, default SDPA, eager step pieces, plain AdamW. `fast` takes the switches as
given, with `compile` / `cuda_graphs` / `fused_kernels` left at None decided by the hardware: on for
CUDA, off on CPU. Compiling the tiny CPU model costs more than the demo run. The fused kernels run
their eager twins on CPU, and those are slower than the plain eager math they replace: CFG + aux
points + main and aux loss, forward and backward, at the CPU benchmark's shape (B = 4, K = 6, 16×8×8
latents, 1 thread), 400 interleaved rounds: 456 µs median (398 min) plain eager against 700 µs (610)
for the twins, paired ratio 1.54 (custom-op dispatch and autograd-function overhead on tensors too
small to amortise it; `bench/test_step_pieces.py` repeats the measurement: min 444 against 690 µs).
So plain eager is the CPU default; an explicit `fused_kernels = true` runs the twins. The trainer resolves once per build and
hands the result to the module switches, the step pieces, `step_options` and the optimizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from soar_fast.config import AccelConfig
from soar_fast.config_io import ConfigError


@dataclass(frozen=True)
class ResolvedAccel:
    """Every switch of `AccelConfig`, decided for `device`; nothing here is left to interpret."""

    mode: str
    attention: str
    float8: bool
    float8_recipe: str
    grad_checkpointing: str
    """none | full | selective, or `reference`: diffusers' own `enable_gradient_checkpointing()`."""
    compile: bool
    cuda_graphs: bool
    """True only on CUDA (there is nothing to capture elsewhere)."""
    rollout_reuse_cond: bool
    rollout_grad: bool
    """The rollout forward records autograd (the reference's cost; numbers unchanged)."""
    batched_aux: bool
    aux_chunk: int
    fuse_main_into_aux: bool
    fused_kernels: bool
    aux_kernel: str
    optimizer: str
    device: torch.device

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "device": str(self.device)}


def check_switches(accel: AccelConfig) -> None:
    """Switch combinations that cannot work, as config errors (before anything heavy is built)."""
    if accel.mode == "reference":
        return
    if accel.fuse_main_into_aux and accel.rollout_reuse_cond:
        raise ConfigError("accel.fuse_main_into_aux needs accel.rollout_reuse_cond = false (the main output "
                          "is the conditional CFG branch otherwise, needed before the aux rows exist)")
    if accel.fuse_main_into_aux and not accel.batched_aux:
        raise ConfigError("accel.fuse_main_into_aux needs accel.batched_aux = true (there is no single "
                          "aux forward to fuse the main batch into otherwise)")


def resolve_accel(accel: AccelConfig | ResolvedAccel, device: torch.device | str) -> ResolvedAccel:
    """`accel` decided for `device`. An already resolved `accel` (for this device) is returned as is."""
    device = torch.device(device)
    if isinstance(accel, ResolvedAccel):
        if accel.device.type != device.type:
            raise ValueError(f"accel resolved for {accel.device}, used on {device}")
        return accel
    check_switches(accel)
    on_cuda = device.type == "cuda"
    if accel.mode == "reference":
        return ResolvedAccel(
            mode="reference", attention="sdpa", float8=False, float8_recipe=accel.float8_recipe,
            grad_checkpointing="reference", compile=False, cuda_graphs=False, rollout_reuse_cond=False,
            rollout_grad=True, batched_aux=False, aux_chunk=0, fuse_main_into_aux=False, fused_kernels=False,
            aux_kernel=accel.aux_kernel, optimizer="adamw", device=device)
    return ResolvedAccel(
        mode=accel.mode, attention=accel.attention, float8=accel.float8, float8_recipe=accel.float8_recipe,
        grad_checkpointing=accel.grad_checkpointing,
        compile=on_cuda if accel.compile is None else bool(accel.compile),
        cuda_graphs=on_cuda and (accel.cuda_graphs is None or bool(accel.cuda_graphs)),
        rollout_reuse_cond=accel.rollout_reuse_cond, rollout_grad=False, batched_aux=accel.batched_aux,
        aux_chunk=max(int(accel.aux_chunk), 0), fuse_main_into_aux=accel.fuse_main_into_aux,
        fused_kernels=on_cuda if accel.fused_kernels is None else bool(accel.fused_kernels),
        aux_kernel=accel.aux_kernel, optimizer=accel.optimizer, device=device)
