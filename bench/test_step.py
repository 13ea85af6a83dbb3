"""Whole training steps per mode: `reference` (the baseline semantics) vs `fast`, plus ablations.

    pytest bench/test_step.py --benchmark-only                       # CPU: tiny preset
    pytest bench/ --benchmark-only --benchmark-json bench/results/step-<gpu>.json   # GPU: sd35m

One timed unit = one optimizer step on already-encoded inputs (the strict comparison: the fast
step gets no credit for caching): `soar_step` (forwards, aux points, loss, backward), grad clip,
optimizer step. Same model config, batch, draws and optimizer for every mode; each mode gets a
fresh model built the trainer's way (`apply_accel`, `step_options`). Warm-up rounds (compile, CUDA
graph capture, allocator) are not timed; each timed round ends with one device sync.

extra_info per row: mode, preset, device, samples_per_s (primary), tokens_per_s (samples/s × the
image + text tokens of one sample), tflops (analytic executed FLOPs: every forward, backward and
recompute, `soar_fast.accel.flops`), mfu (GPU only, against the measured bf16 matmul peak),
peak_mem_bytes (CUDA max allocated; None on CPU), and the resolved switches. The `reference_encode`
row adds the reference's per-step fp32 VAE encode and CLIP/T5 encoding (random-init encoders of the
real sizes on GPU, the demo's tiny ones on CPU) to show what caching saves on top.

The markdown table goes to bench/results/step.md from a GPU run; a CPU run writes
.benchmarks/step-cpu.md and prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc

import pytest
import torch

from bench.conftest import table_path
from bench.step_table import step_table, write_step_table
from soar_fast.accel import apply_accel
from soar_fast.accel.flops import fast_work, measure_peak_flops, reference_work, step_flops
from soar_fast.config import AccelConfig, ModelConfig, OptimConfig, RunConfig, SoarConfig
from soar_fast.models.transformer import build_transformer, velocity_fn
from soar_fast.soar import SigmaGrid, draw
from soar_fast.train.optim import build_optimizer
from soar_fast.train.step import StepFns, soar_step, step_options

CUDA = torch.cuda.is_available()

K = 6
TEXT_TOKENS = 77 + 77          # CLIP 77 + T5 77 (reference training max_sequence_length)
# (preset, resolution px, batch): CPU tiny at the demo's 64 px; GPU SD3.5-M at 512², B = 4 and 8.
CONFIGS = [("sd35m", 512, 4), ("sd35m", 512, 8)] if CUDA else [("tiny", 64, 4)]
# Above B = 4 the fast step back-propagates the aux rows in chunks of a B = 4 step's K·4 rows, so its
# activations stay near the B = 4 step's (estimate, unmeasured: ~2.5 GB per grad-carrying SD3.5-M
# sample at 512² without checkpointing, i.e. ~70 GB at B = 4 + 40 GB of fp32 weights/grads/AdamW).
LARGE_B_AUX_CHUNK = 4 * K
DIMS = {"tiny": (64, 64), "sd35m": (4096, 2048)}  # (joint_attention_dim, pooled dim) of the encoders

# Each ablation turns one switch of the fast default off (or an optional one on).
MODES: dict[str, dict] = {
    "reference": {"mode": "reference"},
    "fast": {},
    "fast-no_reuse_cond": {"rollout_reuse_cond": False},
    "fast-serial_aux": {"batched_aux": False},
    "fast-no_fused_kernels": {"fused_kernels": False},
    "fast+ckpt_selective": {"grad_checkpointing": "selective"},
}
if CUDA:
    MODES.update({
        "fast-no_compile": {"compile": False},
        "fast-no_cuda_graphs": {"cuda_graphs": False},
        "fast+ckpt_full": {"grad_checkpointing": "full"},
        "fast+float8": {"float8": True},
        "fast+adamw8bit": {"optimizer": "adamw8bit"},
    })


def device_label() -> str:
    return torch.cuda.get_device_name() if CUDA else "cpu"


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()  # host sync: the end of a timed round


@pytest.fixture(scope="module")
def step_rows(request):
    """Rows of this module; the markdown table is written (and printed) when the module ends."""
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    path = table_path("step")
    write_step_table(rows, path)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n\nstep benchmark table -> {path}\n{step_table(rows)}", flush=True)


@pytest.fixture(scope="module")
def peak_flops():
    return measure_peak_flops("cuda") if CUDA else None


@pytest.fixture(scope="module", autouse=True)
def cpu_threads():
    # The trainer's setting (run.cpu_threads): one thread is fastest for the tiny model on a busy box.
    before = torch.get_num_threads()
    if not CUDA and RunConfig().cpu_threads > 0:
        torch.set_num_threads(RunConfig().cpu_threads)
    yield
    torch.set_num_threads(before)


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
    """A fresh model + optimizer for `accel`, and `__call__` = one optimizer step."""

    def __init__(self, preset: str, accel: AccelConfig, inputs: Inputs, device: torch.device):
        self.model = build_transformer(ModelConfig(preset=preset), seed=0, joint_attention_dim=DIMS[preset][0],
                                       pooled_projection_dim=DIMS[preset][1]).to(device).train()
        forward = velocity_fn(self.model)
        self.fns = apply_accel(self.model, StepFns(forward=forward, rollout_forward=forward), accel, device=device)
        self.report = self.model.soar_accel_report
        self.opts = step_options(accel, mixed_precision="bf16" if CUDA else "no")
        self.optimizer = build_optimizer(OptimConfig(lr=1e-6, weight_decay=1e-4), self.model.parameters(),
                                         state=accel.optimizer, device=device)
        self.grid = SigmaGrid().to(device)
        self.soar = SoarConfig(trajectory_length=K)
        self.inputs = inputs

    def __call__(self) -> None:
        x = self.inputs
        soar_step(self.fns, x.z0, x.embeds, x.pooled, x.null_e, x.null_p, x.next_draws(), self.grid, self.soar,
                  self.opts)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


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


def release() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_step(benchmark, run, *, mode: str, preset: str, resolution: int, batch: int, accel: AccelConfig,
               report, peak_flops, rows: list[dict]) -> None:
    release()
    warmup = 3
    for _ in range(warmup):   # compile, graph capture, allocator, torchao's step compile
        run()
    sync()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()

    def one_round():
        run()
        sync()

    benchmark.pedantic(one_round, rounds=10, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    img_tokens = (resolution // 8 // 2) ** 2
    n_aux = K * batch
    if mode.startswith("reference"):
        work = reference_work(batch, n_aux)
    else:
        work = fast_work(batch, n_aux, rollout_reuse_cond=accel.rollout_reuse_cond,
                         checkpointing=accel.grad_checkpointing)
    from soar_fast.models.transformer import preset_config

    config = preset_config(preset, joint_attention_dim=DIMS[preset][0], pooled_projection_dim=DIMS[preset][1])
    flops = step_flops(config, img_tokens, TEXT_TOKENS, work) / seconds
    samples_per_s = batch / seconds
    info = {"mode": mode, "preset": preset, "device": device_label(), "batch": batch, "resolution": resolution, "K": K,
                "image_tokens": img_tokens, "text_tokens": TEXT_TOKENS, "samples_per_s": samples_per_s,
                "tokens_per_s": samples_per_s * (img_tokens + TEXT_TOKENS), "ms_per_step": 1e3 * seconds,
                "tflops": flops / 1e12, "mfu": flops / peak_flops if peak_flops else None,
                "peak_tflops": peak_flops / 1e12 if peak_flops else None,
                "peak_mem_bytes": torch.cuda.max_memory_allocated() if CUDA else None,
                "switches": ", ".join(f"{k}={v}" for k, v in report.as_dict().items()
                                   if k not in ("mode", "device"))}
    benchmark.extra_info.update(info)
    rows.append(info)


@pytest.mark.benchmark(group="step")
@pytest.mark.parametrize("preset,resolution,batch", CONFIGS, ids=[f"{p}-{r}px-B{b}" for p, r, b in CONFIGS])
@pytest.mark.parametrize("mode", list(MODES))
def test_step(benchmark, step_rows, peak_flops, mode, preset, resolution, batch):
    if batch > 4 and mode not in ("reference", "fast"):
        pytest.skip("ablations at B = 4 only")
    device = torch.device("cuda" if CUDA else "cpu")
    from soar_fast.accel import resolve_accel

    switches = dict(MODES[mode])
    if batch > 4 and mode == "fast":
        switches["aux_chunk"] = LARGE_B_AUX_CHUNK
    accel = resolve_accel(dataclasses.replace(AccelConfig(), **switches), device)
    inputs = Inputs(preset, resolution, batch, device)
    try:
        run = StepRunner(preset, accel, inputs, device)
        bench_step(benchmark, run, mode=mode, preset=preset, resolution=resolution, batch=batch, accel=accel,
                   report=run.report, peak_flops=peak_flops, rows=step_rows)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{mode} at B = {batch} does not fit on {device_label()}")
    finally:
        run = None
        release()


@pytest.mark.benchmark(group="step")
@pytest.mark.parametrize("preset,resolution,batch", CONFIGS[:1], ids=[f"{p}-{r}px-B{b}" for p, r, b in CONFIGS[:1]])
def test_step_reference_encode(benchmark, step_rows, peak_flops, preset, resolution, batch):
    """The reference step plus its per-step input encoding (what the latent/embedding cache saves)."""
    device = torch.device("cuda" if CUDA else "cpu")
    from soar_fast.accel import resolve_accel

    accel = resolve_accel(AccelConfig(mode="reference"), device)
    inputs = Inputs(preset, resolution, batch, device)
    try:
        encode = ReferenceEncoding(preset, resolution, batch, device)
        step = StepRunner(preset, accel, inputs, device)
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"reference encoders + model do not fit on {device_label()}")

    def run():
        encode()
        step()

    try:
        bench_step(benchmark, run, mode="reference_encode", preset=preset, resolution=resolution, batch=batch,
                   accel=accel, report=step.report, peak_flops=peak_flops, rows=step_rows)
    finally:
        encode = step = None
        release()
