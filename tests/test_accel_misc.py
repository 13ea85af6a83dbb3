"""accel.cuda_graphs, optimizer, telemetry, and apply_accelerations' order and report."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from soar_fast.accel import apply_accelerations, resolve_accel
from soar_fast.accel.cuda_graphs import GraphedForward, apply_cuda_graphs
from soar_fast.accel.telemetry import GpuTelemetry, TelemetrySampler
from soar_fast.config import AccelConfig
from tests.test_accel_attention import inputs, tiny_model
from tests.tolerances import assert_close


def test_cuda_graphs_cpu_is_noop():
    fn = lambda x: x * 2
    wrapped, desc = apply_cuda_graphs(fn, "cpu")
    assert wrapped is fn and desc.startswith("off")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_and_recapture():  # pragma: no cover - GPU only
    w = torch.randn(8, 8, device="cuda")
    g = GraphedForward(lambda x: torch.tanh(x @ w))
    for shape in [(4, 8), (4, 8), (6, 8)]:
        x = torch.randn(*shape, device="cuda")
        assert_close(g(x), torch.tanh(x @ w))
    assert len(g.graphs) == 2
    w.mul_(2)  # in-place parameter update is seen by the replay
    x = torch.randn(4, 8, device="cuda")
    assert_close(g(x), torch.tanh(x @ w))


def test_optimizer_choices():
    from soar_fast.config import OptimConfig
    from soar_fast.train.optim import build_optimizer

    p = [torch.nn.Parameter(torch.randn(64, 64))]
    opt = build_optimizer(OptimConfig(lr=1e-3, weight_decay=0.1), p, state="adamw")
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.1
    pytest.importorskip("torchao", reason="the low-bit optimizers need torchao (not in every GPU image)")
    from torchao.optim import AdamW8bit, AdamWFp8

    assert isinstance(build_optimizer(OptimConfig(lr=1e-3), p, state="adamw8bit"), AdamW8bit)
    assert isinstance(build_optimizer(OptimConfig(lr=1e-3), p, state="adamw_fp8"), AdamWFp8)
    with pytest.raises(ValueError, match="accel.optimizer"):
        build_optimizer(OptimConfig(lr=1e-3), p, state="lion")


def test_telemetry_absent_without_noise_on_cpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert GpuTelemetry.open("cpu") is None
    with TelemetrySampler("cpu") as s:
        pass
    assert s.summary is None
    assert capsys.readouterr() == ("", "")


def test_resolve_auto_and_reference():
    fast = resolve_accel(dataclasses.replace(AccelConfig(), compile=None, cuda_graphs=None), "cpu")
    assert fast.compile is False and fast.cuda_graphs is False
    # The elementwise work: plain eager on CPU (faster than the kernels' eager twins), kernels on CUDA;
    # an explicit choice is kept.
    assert resolve_accel(AccelConfig(), "cpu").fused_kernels is False
    assert resolve_accel(AccelConfig(), "cuda").fused_kernels is True
    assert resolve_accel(AccelConfig(fused_kernels=True), "cpu").fused_kernels is True
    ref = resolve_accel(AccelConfig(mode="reference"), "cpu")
    assert (ref.rollout_reuse_cond, ref.rollout_grad, ref.batched_aux, ref.fused_kernels, ref.grad_checkpointing,
            ref.optimizer) == (False, True, False, False, "reference", "adamw")
    assert resolve_accel(ref, "cpu") is ref  # resolving is done once; a resolved value passes through


def test_apply_accelerations_cpu():
    model = tiny_model()
    x = inputs()
    expected = model(**x)[0]
    report = apply_accelerations(model, AccelConfig(grad_checkpointing="selective", compile=False), "cpu")
    assert report.attention == "sdpa" and report.checkpointing.startswith("selective")
    assert report.cuda_graphs is False and report.float8 == "off"
    assert_close(model(**x)[0], expected)
    ref_model = tiny_model()
    ref = apply_accelerations(ref_model, AccelConfig(mode="reference"), "cpu")
    assert ref.mode == "reference" and ref_model.gradient_checkpointing
    with pytest.raises(RuntimeError, match="accel.float8"):
        apply_accelerations(tiny_model(), AccelConfig(float8=True), "cpu")
