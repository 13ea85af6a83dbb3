"""accel.flops: the analytic count vs torch's FLOP counter and a hand count."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from soar_fast.accel.flops import StepWork, fast_work, forward_flops, reference_work, step_flops
from soar_fast.models.transformer import image_tokens
from tests.test_accel_attention import TINY, inputs, tiny_model


def test_forward_matches_torch_flop_counter():
    model = tiny_model()
    x = inputs(batch=2)
    # MATH: the CPU flash kernel has no FLOP formula in FlopCounterMode; the math path runs bmm.
    with torch.no_grad(), FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(**x)
    n_img = image_tokens(TINY, (8, 8))
    assert n_img == 16
    assert forward_flops(TINY, n_img, 5).total * 2 == counter.get_total_flops()


def test_hand_count_one_plain_block():
    # One joint block that is also the last (context_pre_only), D = 4, N = 4 image, L = 2 text tokens.
    cfg = {"num_layers": 1, "attention_head_dim": 2, "num_attention_heads": 2, "caption_projection_dim": 4,
               "patch_size": 1, "in_channels": 3, "out_channels": 3, "joint_attention_dim": 5, "pooled_projection_dim": 6}
    D, N, L, S = 4, 4, 2, 6
    block = (2 * D * 6 * D            # adaLN-Zero (image)
             + 2 * D * 2 * D          # adaLN-continuous (context, last block)
             + 3 * 2 * N * D * D      # to_q, to_k, to_v
             + 3 * 2 * L * D * D      # add_q/k/v_proj
             + 2 * S * S * D * 2      # QK^T and AV
             + 2 * N * D * D          # to_out
             + 2 * 2 * N * D * 4 * D)  # MLP 4x
    other = 2 * N * 3 * D + 2 * (256 * D + D * D) + 2 * (6 * D + D * D) + 2 * L * 5 * D + 2 * D * 2 * D + 2 * N * D * 3
    f = forward_flops(cfg, N, L)
    assert (f.blocks, f.other) == (block, other)
    assert f.attention == 2 * S * S * D * 2  # QK^T and AV: the only matmuls without a weight


def test_step_accounting():
    f = forward_flops(TINY, 16, 5)
    assert step_flops(TINY, 16, 5, StepWork(grad_samples=3, nograd_samples=2)) == f.total * (3 + 2 + 6)
    full = step_flops(TINY, 16, 5, StepWork(grad_samples=3, nograd_samples=0, checkpointing="full"))
    assert full == f.total * 9 + f.blocks * 3
    # The reference executes strictly more than the fast step at the same batch.
    ref = step_flops(TINY, 16, 5, reference_work(4, 24))
    fast = step_flops(TINY, 16, 5, fast_work(4, 24, rollout_reuse_cond=True, checkpointing="none"))
    assert ref - fast == f.total * 4 + f.blocks * 28
    # Frozen weights (LoRA): backward = input gradients, 1x forward, plus attention's second product.
    lora = step_flops(TINY, 16, 5, StepWork(grad_samples=3, nograd_samples=2, frozen_weights=True))
    assert lora == f.total * (3 + 2 + 3) + f.attention * 3 and 0 < f.attention < f.blocks
