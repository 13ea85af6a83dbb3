"""Analytic FLOPs of the SD3/SD3.5 MMDiT and of one training step, from the diffusers config.

Counted: every matmul (Linear, the patch-embedding conv, attention scores and values) at 2 FLOPs
per multiply-add — the convention of MFU figures (PaLM, torchtitan). Norms, modulations, GELU and
residual adds are not counted (< 1% at SD3.5-M sizes). Per sample, N image tokens, L text tokens,
S = N + L, width D, for each joint block:

    adaLN      2·D·6D (9D for dual-attention blocks)  +  2·D·6D context (2D for the last block)
    attention  6·N·D² + 6·L·D² (q, k, v)  +  4·S²·D (scores, values)  +  2·N·D² + 2·L·D² (outs)
    dual attn  6·N·D² + 4·N²·D + 2·N·D²                   (SD3.5 `dual_attention_layers`)
    MLPs       16·N·D² + 16·L·D²                          (4× hidden; no context MLP in the last block)

plus the patch embedding, timestep/pooled embedders, context embedder, final norm and projection.
`tests/test_accel_flops.py` checks this against `torch.utils.flop_counter` and a hand count.

A step executes forwards (with and without autograd), backwards at 2× the forward FLOPs of every
grad-carrying sample (grad w.r.t. inputs and weights), and with full checkpointing one more block
forward per grad-carrying sample. Selective checkpointing saves matmul outputs: no matmul recompute.
With frozen weights (a LoRA run) the backward of a weight matmul is its input gradient alone, 1× its
forward, while attention's scores and values keep 2×; the adapter's own rank-r matmuls are left out
(r·(D_in + D_out) / (D_in·D_out) of each adapted Linear: 2% at r = 16, D = 1536).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


def _cfg(config: Any) -> Mapping[str, Any]:
    return config if isinstance(config, Mapping) else dict(config)


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one sample's forward: `blocks` (the transformer blocks) + `other` (embedders, head)."""

    blocks: int
    other: int
    attention: int = 0
    """The part of `blocks` that multiplies activations by activations (scores, values): no weights."""

    @property
    def total(self) -> int:
        return self.blocks + self.other


def forward_flops(config: Any, n_image: int, n_text: int) -> ForwardFlops:
    """Matmul FLOPs of one sample through the MMDiT with `n_image` image and `n_text` text tokens."""
    c = _cfg(config)
    D = c["num_attention_heads"] * c["attention_head_dim"]
    assert c["caption_projection_dim"] == D, (
        f"joint attention needs caption_projection_dim == heads·head_dim, got {c['caption_projection_dim']} vs {D}")
    N, L, S = n_image, n_text, n_image + n_text
    p, c_in = c["patch_size"], c["in_channels"]
    c_out = c.get("out_channels") or c_in
    dual = set(c.get("dual_attention_layers") or ())
    layers = c["num_layers"]

    blocks = attention = 0
    for i in range(layers):
        last = i == layers - 1  # context_pre_only: no context outputs after attention
        f = 2 * D * (9 * D if i in dual else 6 * D)
        f += 2 * D * (2 * D if last else 6 * D)
        f += 6 * N * D * D + 6 * L * D * D + 4 * S * S * D + 2 * N * D * D
        attention += 4 * S * S * D
        if not last:
            f += 2 * L * D * D
        if i in dual:
            f += 6 * N * D * D + 4 * N * N * D + 2 * N * D * D
            attention += 4 * N * N * D
        f += 16 * N * D * D
        if not last:
            f += 16 * L * D * D
        blocks += f

    other = 2 * N * c_in * p * p * D                                   # patch embedding conv
    other += 2 * (256 * D + D * D)                                     # timestep embedder
    other += 2 * (c["pooled_projection_dim"] * D + D * D)              # pooled-text embedder
    other += 2 * L * c["joint_attention_dim"] * D                      # context embedder
    other += 2 * D * 2 * D + 2 * N * D * p * p * c_out                 # final adaLN + projection
    return ForwardFlops(blocks=blocks, other=other, attention=attention)


@dataclass(frozen=True)
class StepWork:
    """Transformer sample-passes of one step: what runs with autograd, without, and is recomputed."""

    grad_samples: int
    """Samples whose forward carries autograd and is back-propagated (main + aux rows)."""
    nograd_samples: int
    """Samples through forwards whose output is not back-propagated (the rollout forward; the
    reference's grad-enabled-but-detached 2B rollout counts here: no backward reaches it)."""
    checkpointing: str = "none"
    """`none` | `full` | `selective`: full adds one block forward per grad sample in backward."""
    frozen_weights: bool = False
    """No weight gradients (LoRA: only the adapter trains): backward is the input gradient alone."""


def step_flops(config: Any, n_image: int, n_text: int, work: StepWork) -> int:
    """FLOPs executed by one step: forwards + 2× forward backwards + checkpoint recompute."""
    fwd = forward_flops(config, n_image, n_text)
    backward = fwd.total + fwd.attention if work.frozen_weights else 2 * fwd.total
    total = fwd.total * (work.grad_samples + work.nograd_samples) + backward * work.grad_samples
    if work.checkpointing == "full":
        total += fwd.blocks * work.grad_samples
    return total


def reference_work(batch: int, num_aux_rows: int) -> StepWork:
    """The reference step: main B (grad) + rollout 2B (no backward) + K·B aux (grad), full ckpt."""
    return StepWork(grad_samples=batch + num_aux_rows, nograd_samples=2 * batch, checkpointing="full")


def fast_work(batch: int, num_aux_rows: int, *, rollout_reuse_cond: bool, checkpointing: str,
              frozen_weights: bool = False) -> StepWork:
    """The fast step: main B + aux rows with grad, rollout B (or 2B without reuse) without."""
    return StepWork(grad_samples=batch + num_aux_rows, nograd_samples=batch if rollout_reuse_cond else 2 * batch,
                    checkpointing=checkpointing, frozen_weights=frozen_weights)


def sft_work(batch: int, *, checkpointing: str, frozen_weights: bool = False) -> StepWork:
    """The SFT step (`soar.objective = "sft"`): the main B with grad, nothing else."""
    return StepWork(grad_samples=batch, nograd_samples=0, checkpointing=checkpointing, frozen_weights=frozen_weights)


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                       iters: int = 20) -> float | None:
    """Measured dense-matmul FLOP/s of `device` (the MFU denominator); None off CUDA.

    Measured rather than read from a datasheet: clocks and power caps differ between boards, and
    MFU against the achievable peak is the number that says how much is left.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)  # host sync: timing boundary
    return 2 * n ** 3 * iters / (time.perf_counter() - t)
