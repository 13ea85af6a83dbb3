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


class StandInFA3:
    """FA3's call signature ([B, S, H, D] in and out); records the dtypes it is called with and
    computes the attention with SDPA so the model's output stays meaningful."""

    def __init__(self) -> None:
        self.dtypes: list[tuple[torch.dtype, ...]] = []

    def __call__(self, q, k, v, causal=False):
        self.dtypes.append((q.dtype, k.dtype, v.dtype))
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2), is_causal=causal)
        return out.transpose(1, 2), None  # some builds also return the softmax LSE


ATTENTION_CALLS_PER_FORWARD = 4  # 3 joint blocks + the dual-attention block's attn2


def fa3_model(monkeypatch) -> tuple[SD3Transformer2DModel, StandInFA3, object]:
    """The tiny model accelerated with `accel.attention = "fa3"` as on a Hopper GPU, with FA3 stood in."""
    from soar_fast.accel import apply_accelerations, attention
    from soar_fast.config import AccelConfig

    fa3 = StandInFA3()
    monkeypatch.setattr(attention, "_import_fa3", lambda: fa3)
    monkeypatch.setattr(attention, "_capability", lambda device: (9, 0))
    model = tiny_model().train()
    report = apply_accelerations(model, AccelConfig(attention="fa3", compile=False, cuda_graphs=False), "cpu")
    return model, fa3, report


def test_fa3_gets_bf16_under_autocast_with_fp32_masters(monkeypatch):
    # Training keeps fp32 weights under bf16 autocast: the RMS qk-norm (fp32 weight) hands back fp32
    # q and k beside a bf16 v. FA3 takes fp16/bf16 only, so all three must arrive in bf16.
    model, fa3, report = fa3_model(monkeypatch)
    assert report.attention == "fa3"
    expected = tiny_model().train()(**inputs())[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs())[0]
    assert fa3.dtypes == [(torch.bfloat16,) * 3] * ATTENTION_CALLS_PER_FORWARD
    assert report.as_dict()["attention_ran"] == f"fa3 bf16×{ATTENTION_CALLS_PER_FORWARD}"
    # bf16 activations through three blocks: a few bf16 ulps from the fp32 model.
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)
    out.float().square().mean().backward()  # the cast is differentiable: fp32 masters get gradients
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fa3_is_not_claimed_when_inputs_are_fp32(monkeypatch):
    # No autocast: fp32 q/k/v, which FA3 cannot take; the call goes to SDPA and the count says so.
    model, fa3, report = fa3_model(monkeypatch)
    model(**inputs())
    assert fa3.dtypes == []
    ran = report.as_dict()["attention_ran"]
    assert "fa3" not in ran and ran.endswith(f"fp32×{ATTENTION_CALLS_PER_FORWARD}"), ran


def test_diffusers_processor_is_reported_as_uncounted():
    from soar_fast.accel import apply_accelerations
    from soar_fast.config import AccelConfig

    model = tiny_model()
    report = apply_accelerations(model, AccelConfig(attention="auto", compile=False), "cpu")
    assert report.attention == "sdpa"
    assert report.as_dict()["attention_ran"] == "diffusers processor (not counted)"


def test_counting_and_cast_trace_under_compile():
    # On a GPU the blocks are compiled with fullgraph=True: the cast and the count must not break the
    # graph, and dynamo replays the count on every call.
    from soar_fast.accel.attention import attention_calls
    from soar_fast.accel.compile import apply_compile

    torch._dynamo.reset()
    model = tiny_model().train()
    backend = AttentionBackend("sdpa_cudnn", sdpa_backends=(SDPBackend.FLASH_ATTENTION, SDPBackend.MATH))
    model.set_attn_processor(SoarJointAttnProcessor(backend))
    apply_compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(**inputs())[0].float().mean().backward()
    assert attention_calls(model) == f"sdpa_cudnn (compiled) bf16×{2 * ATTENTION_CALLS_PER_FORWARD}"
