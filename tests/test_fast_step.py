"""The fast step equals the eager objective: each `[accel]` switch alone, and all CPU-capable together.

Tiny preset, float32, CPU, injected draws. The oracle is `soar_fast.soar.reference_loss` (plainest
eager, reference order) on an untouched copy of the model; the step under test is `soar_step` with
the `StepFns`/`StepOptions` the trainer builds (`apply_accel`, `step_options`). Loss within
`STEP_LOSS_RTOL`, every parameter gradient within `STEP_GRAD` (tests/tolerances.py).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from soar_fast.accel import apply_accel, resolve_accel
from soar_fast.config import AccelConfig, SoarConfig
from soar_fast.config_io import ConfigError
from soar_fast.models.transformer import PRESETS, velocity_fn
from soar_fast.soar import SigmaGrid, draw, reference_loss
from soar_fast.train.step import StepFns, soar_step, step_options
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL

B, C, HW, L = 3, 16, 8, 12
# Every switch off: the fast mode's code path doing the eager objective's work.
ALL_OFF = AccelConfig(rollout_reuse_cond=False, batched_aux=False, aux_chunk=0, compile=False, cuda_graphs=False,
                      attention="sdpa", float8=False, optimizer="adamw", grad_checkpointing="none",
                      fused_kernels=False)
# Every switch that runs on a CPU (compile is below, with its own cost note).
ALL_CPU = {"rollout_reuse_cond": True, "batched_aux": True, "aux_chunk": 5, "attention": "auto",
               "grad_checkpointing": "selective", "fused_kernels": True, "aux_kernel": "auto"}

SINGLE = {
    "all_off": {},
    "rollout_reuse_cond": {"rollout_reuse_cond": True},
    "batched_aux": {"batched_aux": True},
    "aux_chunk": {"batched_aux": True, "aux_chunk": 4},
    "ckpt_full": {"grad_checkpointing": "full"},
    "ckpt_selective": {"grad_checkpointing": "selective"},
    "fused_kernels": {"fused_kernels": True, "aux_kernel": "auto"},
    "fused_kernels_eager": {"fused_kernels": True, "aux_kernel": "eager"},
}


def tiny_model() -> torch.nn.Module:
    from diffusers import SD3Transformer2DModel

    config = dict(PRESETS["tiny"], joint_attention_dim=24, pooled_projection_dim=20)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SD3Transformer2DModel(**config).train()


def batch(paths: int):
    g = torch.Generator().manual_seed(123)
    z0 = torch.randn(B, C, HW, HW, generator=g)
    embeds, pooled = torch.randn(B, L, 24, generator=g), torch.randn(B, 20, generator=g)
    null_e, null_p = torch.randn(1, L, 24, generator=g), torch.randn(1, 20, generator=g)
    draws = draw(z0.shape, generator=g, num_points=4, num_paths=paths)
    return z0, embeds, pooled, null_e, null_p, draws


def soar_cfg(paths: int) -> SoarConfig:
    return SoarConfig(trajectory_length=4, num_rollout_paths=paths, rollout_kind="flow_sde")


def grads_of(model) -> dict[str, torch.Tensor | None]:
    """Each parameter's gradient by name; None where it got none (a frozen LoRA base, tests/test_lora.py)."""
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def oracle(model, paths: int):
    soar = soar_cfg(paths)
    z0, embeds, pooled, null_e, null_p, draws = batch(paths)
    parts = reference_loss(velocity_fn(model), z0, embeds, pooled, null_e, null_p, SigmaGrid(), draws,
                           cfg_scale=soar.cfg_scale, num_sampling_steps=soar.num_sampling_steps,
                           lambda_aux=soar.lambda_aux, weighting_scheme=soar.weighting_scheme,
                           kind=soar.rollout_kind, noise_scale=soar.noise_scale)
    parts.loss.backward()
    return parts.loss.detach(), grads_of(model)


def fast(model, accel: AccelConfig, paths: int, world: int = 1):
    forward = velocity_fn(model)
    fns = apply_accel(model, StepFns(forward=forward, rollout_forward=forward), accel, device="cpu")
    # `world` identical ranks: global counts are this rank's times W (device tensors, as all-reduced),
    # and loss_scale = W undoes DDP's gradient averaging, so the gradient is the one-process gradient.
    counts = (lambda m, a: (torch.as_tensor(m) * world, torch.as_tensor(a) * world)) if world > 1 else None
    parts = soar_step(fns, *batch(paths), SigmaGrid(), soar_cfg(paths), step_options(resolve_accel(accel, "cpu")),
                      loss_scale=float(world), global_counts=counts)
    return parts.loss * world, grads_of(model)


def check(accel: AccelConfig, paths: int = 1, world: int = 1) -> torch.nn.Module:
    """The fast step against the oracle; returns the accelerated model."""
    base = tiny_model()
    model = copy.deepcopy(base)
    loss_ref, grads_ref = oracle(base, paths)
    loss, grads = fast(model, accel, paths, world)
    torch.testing.assert_close(loss, loss_ref, rtol=STEP_LOSS_RTOL, atol=0.0)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads_ref.items():
        assert g is not None and grads[name] is not None, f"{name}: no gradient"
        torch.testing.assert_close(grads[name], g, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
    return model


@pytest.mark.parametrize("name", list(SINGLE))
def test_single_switch(name):
    check(dataclasses.replace(ALL_OFF, **SINGLE[name]))


def test_attention_auto_processor(monkeypatch):
    # On a CPU `auto` is diffusers' own SDPA processor, the all-off run again. On sm_90 without FA3 it
    # installs this project's processor with cuDNN first and torch's order after it: that processor
    # (its [B, S, H, D] layout, qk-norms, joint split), with the SDPA backends a CPU has, is checked here.
    from torch.nn.attention import SDPBackend

    from soar_fast.accel import attention

    gpu_auto = attention.AttentionBackend("sdpa_cudnn", sdpa_backends=(
        SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH))
    monkeypatch.setattr(attention, "resolve_attention", lambda choice, device, compiling=False: gpu_auto)
    model = check(dataclasses.replace(ALL_OFF, attention="auto"))
    processors = set(map(type, model.attn_processors.values()))
    assert processors == {attention.SoarJointAttnProcessor}
    assert model.soar_accel_report.attention == "sdpa_cudnn"


@pytest.mark.parametrize("paths", [1, 2])
def test_all_cpu_switches_together(paths):
    check(dataclasses.replace(ALL_OFF, **ALL_CPU), paths=paths)


# Main rows in front of the first aux forward; the rollout computes the conditional branch itself.
FUSED = {"rollout_reuse_cond": False, "batched_aux": True, "fuse_main_into_aux": True}


# aux_chunk 5: smaller than the 12 (P=1) or up to 24 (P=2) aux rows and dividing neither, so main rides
# in a partial-size first chunk that is backpropagated on its own.
@pytest.mark.parametrize("paths", [1, 2])
@pytest.mark.parametrize("aux_chunk", [0, 5])
def test_fuse_main_into_aux(aux_chunk, paths):
    check(dataclasses.replace(ALL_OFF, **FUSED, aux_chunk=aux_chunk), paths=paths)


@pytest.mark.parametrize("aux_chunk", [0, 5])
def test_fuse_main_with_other_switches_and_global_counts(aux_chunk):
    # Main's share must be backpropagated once, scaled by the global normaliser, also per chunk.
    changes = dict(ALL_CPU, **FUSED, aux_chunk=aux_chunk)
    check(dataclasses.replace(ALL_OFF, **changes), paths=2, world=2)


@pytest.mark.parametrize("changes, other_key", [
    ({"rollout_reuse_cond": True}, "accel.rollout_reuse_cond"),
    ({"rollout_reuse_cond": False, "batched_aux": False}, "accel.batched_aux"),
])
def test_fuse_main_config_errors(changes, other_key):
    with pytest.raises(ConfigError, match="accel.fuse_main_into_aux") as err:
        resolve_accel(AccelConfig(fuse_main_into_aux=True, **changes), "cpu")
    assert other_key in str(err.value)
    # The reference baseline ignores every switch, this one too.
    ref = resolve_accel(AccelConfig(mode="reference", fuse_main_into_aux=True, **changes), "cpu")
    assert not step_options(ref).fuse_main


def test_reference_mode():
    # The baseline: grad-enabled [uncond; cond] rollout, serial aux forwards, diffusers checkpointing.
    check(AccelConfig(mode="reference"))


def test_compile_switch(monkeypatch):
    # aot_eager: dynamo + AOT autograd through the whole step wiring in seconds; inductor's code
    # generation is checked per block in tests/test_accel_compile.py (slow) and below.
    import soar_fast.accel.compile as compile_mod

    torch._dynamo.reset()
    monkeypatch.setattr(compile_mod, "DEFAULT_BACKEND", "aot_eager")
    # Every distinct (batch, grad mode) recompiles each block type (dynamic=False): keep to three
    # shapes here; chunks and selective checkpointing under compile are in test_accel_compile.py.
    check(dataclasses.replace(ALL_OFF, **dict(ALL_CPU, aux_chunk=0, grad_checkpointing="none"), compile=True))


@pytest.mark.slow
def test_compile_switch_inductor():
    torch._dynamo.reset()
    check(dataclasses.replace(ALL_OFF, **ALL_CPU, compile=True))


@pytest.mark.parametrize("aux_kernel", ["auto", "eager"])
def test_fused_aux_loss_recomputes_targets_from_latents(aux_kernel, monkeypatch):
    # With the fused kernels the aux kernel writes no targets and the loss recomputes them from the
    # float32 latents (kernels/flow_loss.py): same loss and gradients as the eager objective.
    import soar_fast.kernels.flow_loss as flow_loss_mod

    calls = []
    real = flow_loss_mod.flow_loss_from_latents

    def counted(pred, latents, *args, **kwargs):
        calls.append(pred.shape[0])
        return real(pred, latents, *args, **kwargs)

    monkeypatch.setattr(flow_loss_mod, "flow_loss_from_latents", counted)
    accel = dataclasses.replace(ALL_OFF, batched_aux=True, aux_chunk=5, fused_kernels=True, aux_kernel=aux_kernel)
    check(accel, paths=2)
    # Every aux row went through the recomputed-target loss, chunk by chunk (P = 2: 12 + up to 12 rows).
    assert len(calls) >= 3 and 12 < sum(calls) <= 24

    forward = velocity_fn(tiny_model())
    fns = apply_accel(tiny_model(), StepFns(forward=forward, rollout_forward=forward), accel, device="cpu")
    z0, _, _, _, _, draws = batch(2)
    v = torch.zeros_like(z0)
    pts = fns.cfg_aux(z0, v, v, z0, draws, SigmaGrid(), soar_cfg(2))
    assert pts.targets is None and pts.latents.dtype == torch.float32
