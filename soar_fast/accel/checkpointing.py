"""`accel.grad_checkpointing`: activation checkpointing of the transformer blocks.

- `none`: keep every activation (fastest; the fast step's memory cut — no grad-enabled 2B rollout
  graph, one batched aux forward — usually leaves room for it on 80–141 GB cards).
- `full`: each block saves only its inputs and re-runs its forward in backward (+1 block forward of
  FLOPs per grad-carrying sample; the reference's setting).
- `selective`: op-level selective checkpointing (torchtitan's `op` mode): outputs of matmuls and
  attention are saved, the cheap elementwise ops (norms, modulation, GELU, residual adds) are
  recomputed. Roughly halves activation memory at ~no extra matmul FLOPs.

The wrapper replaces each block's `forward` on the instance (module tree and parameter names are
untouched) and runs only when autograd is recording, so the no-grad rollout forward pays nothing.
Applied before `apply_compile`, so the compiled region contains the checkpoint (dynamo traces it
as a higher-order op and honours the selective policy).

- `reference` (chosen by `accel.mode = "reference"`, not a config value): the reference's exact
  setting, diffusers' own `enable_gradient_checkpointing()` (non-reentrant, per block).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

CheckpointingChoice = Literal["none", "full", "selective", "reference"]


def _save_list() -> set:
    aten = torch.ops.aten
    ops = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
           aten.convolution.default, aten._scaled_dot_product_flash_attention.default,
           aten._scaled_dot_product_efficient_attention.default,
           aten._scaled_dot_product_cudnn_attention.default}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_mm"):
        if hasattr(aten, name):
            ops.add(getattr(aten, name).default)
    return ops


def _selective_policy(save: set):
    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE
    return policy


def _selective_context():
    return create_selective_checkpoint_contexts(_selective_policy(_save_list()))


def _checkpointed_forward(forward, selective: bool, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    if selective:
        return checkpoint(forward, *args, use_reentrant=False, context_fn=_selective_context, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_checkpointing(transformer: torch.nn.Module, choice: CheckpointingChoice) -> str:
    """Checkpoint every block of `transformer.transformer_blocks` per `choice`; return a description."""
    if choice == "none":
        return "none"
    if choice == "reference":
        return reference_checkpointing(transformer)
    if choice not in ("full", "selective"):
        raise ValueError(f"accel.grad_checkpointing must be none, full or selective; got {choice!r}")
    blocks = transformer.transformer_blocks
    for block in blocks:
        if getattr(block, "_soar_checkpointing", None) is not None:
            raise RuntimeError("accel.grad_checkpointing applied twice to the same transformer")
        block.forward = functools.partial(_checkpointed_forward, block.forward, choice == "selective")
        block._soar_checkpointing = choice
    return f"{choice} ({len(blocks)} blocks)"


def reference_checkpointing(transformer: torch.nn.Module) -> str:
    """The reference's `--gradient_checkpointing`: diffusers' per-block non-reentrant checkpoint."""
    transformer.enable_gradient_checkpointing()
    return "full (diffusers enable_gradient_checkpointing, reference)"
