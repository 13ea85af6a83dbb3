"""Whole training steps per mode, built once and timed round by round: the core of bench/test_step.py
and bench/gpu_campaign.py.

One timed unit = one optimizer step on already-encoded inputs (the strict comparison: the fast step
gets no credit for caching): `soar_step` (forwards, aux points, loss, backward), grad clip, optimizer
step. Same model config, batch, draws and optimizer for every mode; each mode gets a fresh model
built the trainer's way (`apply_accel`, `step_options`).

Timing is interleaved: every mode of a group is built and warmed up first (the first step, with
compile and graph capture, is timed on its own as `first_step_s`), then each round runs every mode
once, the order rotating by one mode per round, so each mode sees the same minutes of the machine.
A mode's speed-up is paired: the median over rounds of (reference's time / the mode's time) in that
round. On a GPU two SD3.5-M training states (fp32 weights, grads, AdamW: ~40 GB each) do not fit beside
a step's activations, so there each mode is its own group ("alone"); the CPU groups all modes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from soar_fast.accel import apply_accel, resolve_accel
from soar_fast.accel.flops import fast_work, reference_work, sft_work, step_flops
from soar_fast.config import AccelConfig, LoraConfig, ModelConfig, OptimConfig, SoarConfig
from soar_fast.models.lora import apply_lora, lora_info
from soar_fast.models.transformer import build_transformer, preset_config, velocity_fn
from soar_fast.soar import SigmaGrid, draw
from soar_fast.train.optim import build_optimizer
from soar_fast.train.step import StepFns, soar_step, step_options
from soar_fast.train.trainer import trainable_parameters

K = 6
TEXT_TOKENS = 77 + 77          # CLIP 77 + T5 77 (reference training max_sequence_length)
DIMS = {"tiny": (64, 64), "sd35m": (4096, 2048)}  # (joint_attention_dim, pooled dim) of the encoders
# Above B = 4 the fast step back-propagates the aux rows in chunks of a B = 4 step's K·4 rows, so its
# activations stay near the B = 4 step's (estimate, unmeasured: ~2.5 GB per grad-carrying SD3.5-M
# sample at 512² without checkpointing, i.e. ~70 GB at B = 4 + 40 GB of fp32 weights/grads/AdamW).
LARGE_B_AUX_CHUNK = 4 * K
# The reference step without diffusers' gradient checkpointing: separates what restructuring the step
# buys from what dropping checkpointing buys. (`accel.mode = "reference"` ignores every switch, so the
# benchmark removes the checkpointing itself.)
NO_REFERENCE_CKPT = "_no_reference_ckpt"
ENCODE = "_with_reference_encoding"
# A LoRA run of this rank on `[lora]`'s default targets (the attention layers), built by the trainer's
# `build_lora` steps: frozen base in the compute dtype, fp32 adapter, the optimizer over the adapter.
LORA_RANK = "_lora_rank"
BENCH_LORA_RANK = 16
# The plain flow-matching baseline (`soar.objective = "sft"`) on the fast switches: what a step costs
# without the rollout and the aux rows.
SFT = "_sft_objective"


def step_modes(cuda: bool) -> dict[str, dict]:
    """Mode name -> `[accel]` changes from the defaults, in measuring priority order.

    Each ablation flips one switch of the resolved `fast` default. `fused_kernels` defaults on with
    CUDA and off on CPU (`resolve_accel`), so its ablation is `-no_fused_kernels` there and
    `+fused_kernels` (the eager twins) here."""
    modes: dict[str, dict] = {"reference": {"mode": "reference"}, "fast": {}, "fast+lora": {LORA_RANK: BENCH_LORA_RANK},
                              "sft": {SFT: True}}
    if cuda:
        modes.update({
            "fast-no_compile": {"compile": False},
            "fast-no_cuda_graphs": {"cuda_graphs": False},
            "fast+float8": {"float8": True},
            "fast+adamw8bit": {"optimizer": "adamw8bit"},
            "fast+ckpt_full": {"grad_checkpointing": "full"},
        })
    modes.update({
        "fast+ckpt_selective": {"grad_checkpointing": "selective"},
        "reference-no_ckpt": {"mode": "reference", NO_REFERENCE_CKPT: True},
        "fast-no_reuse_cond": {"rollout_reuse_cond": False},
        "fast-serial_aux": {"batched_aux": False},
        "fast-no_fused_kernels" if cuda else "fast+fused_kernels": {"fused_kernels": not cuda},
        "reference_encode": {"mode": "reference", ENCODE: True},
    })
    return modes


def needs_torchao(switches: dict) -> bool:
    return bool(switches.get("float8")) or switches.get("optimizer") in ("adamw8bit", "adamw_fp8")


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync: the end of a timed step


class Inputs:
    """One batch of already-encoded inputs and a cycle of injected draws, identical for every mode."""

    def __init__(self, preset: str, resolution: int, batch: int, device: torch.device):
        g = torch.Generator(device=device).manual_seed(0)
        hw = resolution // 8
        d_text, d_pool = DIMS[preset]
        self.z0 = torch.randn(batch, 16, hw, hw, generator=g, device=device)
        self.embeds = torch.randn(batch, TEXT_TOKENS, d_text, generator=g, device=device)
        self.pooled = torch.randn(batch, d_pool, generator=g, device=device)
        self.null_e = torch.randn(1, TEXT_TOKENS, d_text, generator=g, device=device)
        self.null_p = torch.randn(1, d_pool, generator=g, device=device)
        self.draws = [draw(self.z0.shape, generator=g, num_points=K, device=device) for _ in range(4)]
        self.i = 0

    def next_draws(self):
        self.i = (self.i + 1) % len(self.draws)
        return self.draws[self.i]


class StepRunner:
    """A fresh model + optimizer for one mode, and `__call__` = one optimizer step."""

    def __init__(self, preset: str, switches: dict, inputs: Inputs, device: torch.device, *, batch: int):
        self.lora_rank = int(switches.get(LORA_RANK, 0))
        objective = "sft" if switches.get(SFT) else "soar"
        switches = {k: v for k, v in switches.items() if not k.startswith("_")}
        if batch > 4 and not switches:  # the fast default at large B
            switches["aux_chunk"] = LARGE_B_AUX_CHUNK
        self.accel = resolve_accel(dataclasses.replace(AccelConfig(), **switches), device)
        # Initialised on the device itself: SD3.5-M's 2.5 B parameters take tens of seconds to draw on a CPU.
        with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
            model = build_transformer(ModelConfig(preset=preset), seed=0, joint_attention_dim=DIMS[preset][0],
                                      pooled_projection_dim=DIMS[preset][1])
        self.model = model.to(device).train()
        mixed_precision = "bf16" if device.type == "cuda" else "no"
        if self.lora_rank:
            info = lora_info(LoraConfig(rank=self.lora_rank), self.model, init_seed=0)
            apply_lora(self.model, info, base_dtype=torch.bfloat16 if mixed_precision == "bf16" else torch.float32)
        forward = velocity_fn(self.model)
        self.fns = apply_accel(self.model, StepFns(forward=forward, rollout_forward=forward), self.accel,
                               device=device)
        self.report = self.model.soar_accel_report
        self.opts = step_options(self.accel, mixed_precision=mixed_precision)
        self.params = trainable_parameters(self.model)
        self.optimizer = build_optimizer(OptimConfig(lr=1e-6, weight_decay=1e-4), self.params,
                                         state=self.accel.optimizer, device=device)
        self.grid = SigmaGrid().to(device)
        self.soar = SoarConfig(trajectory_length=K, objective=objective)
        self.inputs = inputs

    def without_reference_checkpointing(self) -> StepRunner:
        self.model.disable_gradient_checkpointing()
        self.report.checkpointing = "none (reference step without checkpointing)"
        return self

    def __call__(self) -> None:
        x = self.inputs
        soar_step(self.fns, x.z0, x.embeds, x.pooled, x.null_e, x.null_p, x.next_draws(), self.grid, self.soar,
                  self.opts)
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_bytes(self) -> int:
        """Bytes this mode holds between steps: weights, buffers and optimizer state (grads are freed)."""
        seen: dict[int, int] = {}
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        for t in tensors:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return sum(seen.values())


class ReferenceEncoding:
    """The reference's per-step input work: fp32 VAE encode of the images, CLIP-L/G + T5 encoding."""

    def __init__(self, preset: str, resolution: int, batch: int, device: torch.device):
        from soar_fast.models.text import build_tiny_text_encoders
        from soar_fast.models.vae import build_tiny_vae

        if preset == "tiny":
            self.text = build_tiny_text_encoders(*DIMS["tiny"], device=device)
            self.vae = build_tiny_vae(device=device)
        else:
            self.text, self.vae = real_size_encoders(device)
        g = torch.Generator(device=device).manual_seed(1)
        self.pixels = torch.rand(batch, 3, resolution, resolution, generator=g, device=device) * 2 - 1
        self.prompts = [f"a photo of a red cube number {i}" for i in range(batch)]

    @torch.no_grad()
    def __call__(self) -> None:
        from soar_fast.models.vae import encode_posterior

        mean, std = encode_posterior(self.vae, self.pixels)
        embeds, pooled = self.text.encode(self.prompts, max_sequence_length=77)
        return mean, std, embeds, pooled


def real_size_encoders(device: torch.device):
    """Random-init CLIP-L, CLIP-G (bf16), T5-XXL encoder (bf16) and SD3 VAE (fp32) of the real sizes,
    with the local tiny tokenizers (token ids only need to be in range). GPU only (~11 GB)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from soar_fast.models.text import TextEncoders, build_tiny_clip_tokenizer, build_tiny_t5_tokenizer

    with torch.device(device):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
            num_attention_heads=12, hidden_act="quick_gelu")).to(torch.bfloat16)
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280, num_hidden_layers=32,
            num_attention_heads=20, hidden_act="gelu")).to(torch.bfloat16)
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                     num_heads=64, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                     use_cache=False)).to(torch.bfloat16)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                            sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
                            scaling_factor=1.5305, shift_factor=0.0609)
    text = TextEncoders(clip_l.eval(), clip_g.eval(), t5.eval(), build_tiny_clip_tokenizer(),
                        build_tiny_clip_tokenizer("!"), build_tiny_t5_tokenizer())
    return text, vae.eval().requires_grad_(False)


@dataclass
class Built:
    """One mode ready to time: `run` is one step; `runner` the StepRunner inside it."""

    name: str
    switches: dict
    run: Callable[[], None]
    runner: StepRunner
    first_step_s: float = 0.0
    warmup_s: float = 0.0
    seconds: list[float] = field(default_factory=list)
    peak_mem_bytes: int | None = None
    cpu_peak_bytes: int | None = None


def build_mode(name: str, switches: dict, preset: str, resolution: int, batch: int, inputs: Inputs,
               device: torch.device, *, warmup: int) -> Built:
    """Build `name` and run its warm-up steps (the first one, with compile and capture, timed alone)."""
    runner = StepRunner(preset, switches, inputs, device, batch=batch)
    if switches.get(NO_REFERENCE_CKPT):
        runner.without_reference_checkpointing()
    run: Callable[[], None] = runner
    if switches.get(ENCODE):
        encode = ReferenceEncoding(preset, resolution, batch, device)

        def run() -> None:
            encode()
            runner()

    built = Built(name, switches, run, runner)
    start = time.perf_counter()
    run()
    sync(device)
    built.first_step_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):   # graph re-capture, allocator, torchao's step compile
        run()
    sync(device)
    built.warmup_s = time.perf_counter() - start
    return built


def time_interleaved(group: list[Built], rounds: int, device: torch.device) -> None:
    """`rounds` rounds over `group`, each mode once per round, the order rotating by one per round."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = len(group)
    for r in range(rounds):
        for i in range(n):
            built = group[(r + i) % n]
            start = time.perf_counter()
            built.run()
            sync(device)
            built.seconds.append(time.perf_counter() - start)
    if device.type == "cuda" and n == 1:
        group[0].peak_mem_bytes = torch.cuda.max_memory_allocated(device)


def cpu_step_peak_bytes(built: Built) -> int | None:
    """CPU peak of one step: the mode's held state plus the highest net allocation during the step,
    read from the profiler's memory events (the CPU allocator keeps no peak statistics)."""
    from torch.profiler import ProfilerActivity, profile

    held = built.runner.state_bytes()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            built.run()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except Exception:  # noqa: BLE001 - profiler internals differ between torch builds: no figure then
        return None
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return held + peak


def paired_speedup(reference: list[float], mode: list[float]) -> float | None:
    """Median over rounds of reference time / mode time in the same round."""
    if not reference or len(reference) != len(mode):
        return None
    return statistics.median(r / m for r, m in zip(reference, mode))


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def make_row(built: Built, *, preset: str, resolution: int, batch: int, device: torch.device,
             peak_flops: float | None, reference: Built | None, timing: str) -> dict:
    """The benchmark row of one measured mode (see bench/test_step.py for the fields)."""
    median, best = statistics.median(built.seconds), min(built.seconds)
    img_tokens = (resolution // 8 // 2) ** 2
    n_aux = K * batch
    accel = built.runner.accel
    if built.runner.soar.objective == "sft":
        work = sft_work(batch, checkpointing=accel.grad_checkpointing, frozen_weights=built.runner.lora_rank > 0)
    elif accel.mode == "reference":
        work = reference_work(batch, n_aux)
        if built.switches.get(NO_REFERENCE_CKPT):
            work = dataclasses.replace(work, checkpointing="none")
    else:
        work = fast_work(batch, n_aux, rollout_reuse_cond=accel.rollout_reuse_cond,
                         checkpointing=accel.grad_checkpointing, frozen_weights=built.runner.lora_rank > 0)
    config = preset_config(preset, joint_attention_dim=DIMS[preset][0], pooled_projection_dim=DIMS[preset][1])
    flops = step_flops(config, img_tokens, TEXT_TOKENS, work) / median
    samples_per_s = batch / median
    switches = built.runner.report.as_dict()
    if built.runner.lora_rank:
        switches["lora_rank"] = built.runner.lora_rank
    return {
        "mode": built.name, "preset": preset, "device": device_label(device), "batch": batch,
        "resolution": resolution, "objective": built.runner.soar.objective, "K": K, "image_tokens": img_tokens, "text_tokens": TEXT_TOKENS,
        "timing": timing, "rounds": len(built.seconds),
        "samples_per_s": samples_per_s, "tokens_per_s": samples_per_s * (img_tokens + TEXT_TOKENS),
        "ms_per_step": 1e3 * median, "ms_min": 1e3 * best,
        "speedup_paired": paired_speedup(reference.seconds, built.seconds) if reference is not None else None,
        "first_step_s": built.first_step_s, "warmup_s": built.warmup_s,
        "tflops": flops / 1e12, "mfu": flops / peak_flops if peak_flops else None,
        "peak_tflops": peak_flops / 1e12 if peak_flops else None,
        "peak_mem_bytes": built.peak_mem_bytes, "cpu_peak_bytes": built.cpu_peak_bytes,
        "attention_ran": switches.pop("attention_ran"),
        "switches": ", ".join(f"{k}={v}" for k, v in switches.items() if k not in ("mode", "device")),
        "seconds": list(built.seconds),
    }


def measure_interleaved(modes: dict[str, dict], preset: str, resolution: int, batch: int,
                        device: torch.device, *, rounds: int, warmup: int,
                        peak_flops: float | None = None) -> dict[str, dict]:
    """Build every mode, time them interleaved, measure CPU peaks; rows by mode (CPU, or small GPU
    models: everything must fit at once)."""
    inputs = Inputs(preset, resolution, batch, device)
    group = [build_mode(name, switches, preset, resolution, batch, inputs, device, warmup=warmup)
             for name, switches in modes.items()]
    time_interleaved(group, rounds, device)
    if device.type == "cpu":
        for built in group:
            built.cpu_peak_bytes = cpu_step_peak_bytes(built)
    reference = next((b for b in group if b.name == "reference"), None)
    timing = f"interleaved ({len(group)} modes)"
    return {b.name: make_row(b, preset=preset, resolution=resolution, batch=batch, device=device,
                             peak_flops=peak_flops, reference=reference, timing=timing) for b in group}
