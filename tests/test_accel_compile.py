"""accel.compile: per-block torch.compile matches eager with fullgraph=True; parameter names kept.

The default test traces with `aot_eager` (dynamo + AOT autograd + the checkpoint higher-order op,
~25 s on 2 cores); the inductor run costs ~90 s with a cold cache and is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import SD3Transformer2DModel

from soar_fast.accel.checkpointing import apply_checkpointing
from soar_fast.accel.compile import apply_compile
from tests.test_accel_attention import TINY, inputs
from tests.tolerances import STEP_GRAD, assert_close


def check_compiled_blocks_match_eager(backend: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    # Two blocks, two code paths: dual attention (block 0) and context_pre_only (block 1).
    eager = SD3Transformer2DModel(**dict(TINY, num_layers=2))
    compiled = copy.deepcopy(eager)
    # Selective checkpointing inside the compiled block: the order apply_accelerations uses.
    apply_checkpointing(compiled, "selective")
    assert "fullgraph=True" in apply_compile(compiled, backend=backend)
    assert [n for n, _ in compiled.named_parameters()] == [n for n, _ in eager.named_parameters()]
    x = inputs()
    out_e = eager(**x)[0]
    out_c = compiled(**x)[0]
    assert_close(out_c, out_e)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (name, pe), (_, pc) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
    with torch.no_grad():
        assert_close(compiled(**x)[0], out_e.detach())


def test_compiled_blocks_match_eager():
    check_compiled_blocks_match_eager("aot_eager")


@pytest.mark.slow
def test_inductor_blocks_match_eager():
    check_compiled_blocks_match_eager("inductor")


def test_soar_processor_traces_fullgraph():
    # Our processor under dynamo: the [B, S, H, D] layout and an sdpa_kernel context with priorities
    # (the CUDA `auto` path's shape), on CPU backends.
    from torch.nn.attention import SDPBackend

    from soar_fast.accel.attention import AttentionBackend, SoarJointAttnProcessor

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = SD3Transformer2DModel(**dict(TINY, num_layers=2)).eval()
    compiled = copy.deepcopy(eager)
    backend = AttentionBackend("test", sdpa_backends=(SDPBackend.FLASH_ATTENTION, SDPBackend.MATH))
    compiled.set_attn_processor(SoarJointAttnProcessor(backend))
    apply_compile(compiled, backend="eager")
    with torch.no_grad():
        assert_close(compiled(**inputs())[0], eager(**inputs())[0])
