"""accel.attention: backend resolution and the [B, S, H, D] processor vs diffusers' own."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import SD3Transformer2DModel
from torch.nn.attention import SDPBackend

from soar_fast.accel.attention import (
    AttentionBackend,
    SoarJointAttnProcessor,
    apply_attention,
    resolve_attention,
)
from tests.tolerances import assert_close

# SD3.5 structure in miniature: a dual-attention block, qk RMSNorm, a context_pre_only last block.
TINY = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 3, "attention_head_dim": 8, "num_attention_heads": 2,
            "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 12, "out_channels": 4,
            "pos_embed_max_size": 8, "dual_attention_layers": (0,), "qk_norm": "rms_norm"}


def tiny_model() -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(**TINY).eval()


def inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(batch, 4, 8, 8, generator=g),
                "encoder_hidden_states": torch.randn(batch, 5, 16, generator=g),
                "pooled_projections": torch.randn(batch, 12, generator=g),
                "timestep": torch.tensor([500.0, 20.0][:batch]), "return_dict": False}


def test_cpu_resolution():
    assert resolve_attention("auto", "cpu").name == "sdpa"
    assert resolve_attention("sdpa", "cpu").name == "sdpa"
    with pytest.raises(RuntimeError, match="accel.attention = 'fa3'"):
        resolve_attention("fa3", "cpu")
    for choice in ("sdpa_cudnn", "sdpa_flash"):
        with pytest.raises(RuntimeError, match="needs a CUDA device"):
            resolve_attention(choice, "cpu")
    with pytest.raises(ValueError, match="accel.attention must be one of"):
        resolve_attention("xformers", "cpu")


@pytest.mark.parametrize("backends", [None, (SDPBackend.MATH,)], ids=["default", "math-context"])
def test_processor_matches_diffusers(backends):
    model = tiny_model()
    ours = copy.deepcopy(model)
    ours.set_attn_processor(SoarJointAttnProcessor(AttentionBackend("test", sdpa_backends=backends)))
    x = inputs()
    expected = model(**x)[0]
    actual = ours(**x)[0]
    assert_close(actual, expected)


def test_apply_sdpa_keeps_diffusers_processor():
    model = tiny_model()
    before = {k: type(v) for k, v in model.attn_processors.items()}
    assert apply_attention(model, "auto", "cpu") == "sdpa"
    assert {k: type(v) for k, v in model.attn_processors.items()} == before
