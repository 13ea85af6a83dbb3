"""The run configuration: one dataclass per TOML table, a docstring per field.

Precedence is CLI `--section.key=value` > the TOML file > these defaults. With no file at all
the defaults are the embedded demo (tiny model, generated data, CPU-sized); the reference's
values are kept wherever the reference has one (docs/objective.md §9), and a field whose
demo value differs from the reference says so. Loading, overrides and error reporting live in
`config_io.py`; each component receives only its own section.

A field with limits declares them beside it, `name: int = ruled(default, at_least(1))` (rule types in
`config_rules.py`); every rule is checked when the config is loaded, and the property test of
tests/test_config_rules.py covers a newly ruled field without new test code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from soar_fast.config_rules import (
    DEMO_WIDEST_ASPECT,
    FINITE,
    above,
    at_least,
    between,
    demo_fills_a_batch,
    image_side,
    lora_init,
    ruled,
)


@dataclass
class RunConfig:
    output_dir: str = "runs/soar-demo"
    """Everything a run writes goes under this folder (checkpoints, metrics, plots, config.toml)."""
    name: str = "soar"
    """Run name shown in logs and TensorBoard."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: `auto` = CUDA when available, else CPU."""
    cpu_threads: int = ruled(1, at_least(0))
    """torch intra-op CPU threads (0 = torch's default, one per core). 1 because the demo's tiny
    matrices gain nothing from more, while spin-waiting OpenMP threads on a busy 2-core machine made
    a demo step 15x slower (measured 0.25 s with 1 thread vs 3.9 s with 2)."""
    overwrite: bool = False
    """Start a fresh run in an `output_dir` that already holds checkpoints or an exported `transformer/`,
    deleting that run's checkpoints/, transformer/, metrics.jsonl, tensorboard/ and plots/. Without it
    such a folder is an error, so a finished run is never overwritten by accident."""


@dataclass
class ModelConfig:
    preset: Literal["tiny", "sd35m", "sd35l"] = "tiny"
    """Built-in architecture with random weights: `tiny` (CPU seconds per step), `sd35m` (the
    SD3.5-Medium transformer) or `sd35l` (SD3.5-Large's). Ignored when `path` is set."""
    path: str | None = None
    """Local diffusers folder (e.g. an SD3.5 download or `soar-fast preset export tiny DIR`).
    Loaded with local files only: nothing is ever downloaded."""
    vae: Literal["auto", "toy", "tiny"] = "auto"
    """The VAE of a preset (no `path`): `toy`, a fixed lossless map (2×2 pixel-unshuffle + an orthogonal
    12→16 channel embedding, `models/toy_vae.py`) whose decodes are pictures, or `tiny`, a random-init
    SD3-layout AutoencoderKL (8× downsampling, SD3's latent geometry) whose decodes are coloured noise.
    `auto` = `toy` for the `tiny` preset (the demo), `tiny` for `sd35m` / `sd35l` (their benchmarks and
    plans keep SD3's latent sizes). Ignored when `path` is set: the folder's own `vae/` is used (an
    AutoencoderKL, or a toy one from `preset export toy`)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the exported final `transformer/` (or `lora/` adapter). Training keeps fp32 master weights
    of everything it trains (and checkpoints store them, for exact resume); bf16 compute is
    `train.mixed_precision`. A LoRA run's frozen base is stored in the compute dtype (`lora.rank`)."""
    resolution: int = ruled(64, image_side(widest_aspect=DEMO_WIDEST_ASPECT))
    """Image side in pixels for the built-in demo data, previews and benchmark inputs, and the default
    side of `sample`/`eval` (reference: 512). A multiple of the VAE factor × patch size: 4 with
    the toy VAE (the demo's), 16 for SD3's VAE and the tiny one."""


@dataclass
class DataConfig:
    jsonl: str | None = None
    """Reference-format JSONL (md5, caption_en, bw, bh per line). None = the generated demo set."""
    image_dir: str | None = None
    """Folder holding `<md5>.jpg|.png|.webp`. Defaults to the JSONL's folder."""
    batch_size: int = ruled(4, at_least(1))
    """Samples per process per micro-step (reference: 4 per GPU)."""
    num_workers: int = ruled(0, at_least(0))
    """DataLoader worker processes (reference: 8)."""
    random_flip: bool = False
    """Horizontal flip with p = 0.5 (reference default: off)."""
    max_sequence_length: int = ruled(77, at_least(1))
    """T5 tokens in the prompt embedding (reference training: 77; its evaluation used 256)."""
    cache: str | None = None
    """Folder of cached text embeddings and VAE posteriors written by `soar-fast cache`. When set,
    training loads neither text encoders nor the VAE."""
    on_bad_sample: Literal["skip", "error"] = "skip"
    """A bad JSONL line or unreadable image: drop it and list it in data_report.json, or stop."""
    cond_dropout_rate: float = ruled(0.0, between(0, 1))
    """Per-sample probability of training on the empty prompt (reference: whole batch, default 0)."""
    demo_size: int = ruled(64, demo_fills_a_batch())
    """Number of images generated for the embedded demo data set."""
    encoder_dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the text encoders run in and embeddings are cached in (reference: bf16 under mixed
    precision). The VAE always encodes in float32, as in the reference."""
    encode_batch_size: int = ruled(16, at_least(1))
    """Images/captions per encoder forward in `soar-fast cache` and the demo's one-off encoding."""
    cache_shard_size: int = ruled(256, at_least(1))
    """Samples per cache shard (one safetensors file, one bucket); the unit of resume and of the
    rank/world split of `soar-fast cache`."""


@dataclass
class SoarConfig:
    objective: Literal["soar", "sft"] = "soar"
    """`soar`: the SOAR objective, main + λ·aux over the rollout's aux points. `sft`: the plain
    flow-matching baseline through the same trainer: the main forward and its loss alone, with no
    rollout and no aux forward (λ = 0 would still pay for both). Under `sft` only the timestep density
    fields below are read, and `loss_aux` is left out of the logs (there is no aux term)."""
    trajectory_length: int = ruled(6, at_least(1))
    """K: auxiliary points per path and sample."""
    num_rollout_paths: int = ruled(1, at_least(1))
    """P: path 0 is the ODE rollout; paths 1..P-1 use `rollout_kind` with fresh noise."""
    num_sampling_steps: int = ruled(40, at_least(1))
    """S: the rollout moves t by 1/S (unshifted time)."""
    cfg_scale: float = ruled(4.5, FINITE)
    """Guidance scale w of the rollout step."""
    lambda_aux: float = ruled(1.0, at_least(0))
    """Weight λ of the auxiliary loss in the global mean."""
    weighting_scheme: Literal["logit_normal", "mode", "cosmap", "uniform", "sigma_sqrt"] = "logit_normal"
    """Timestep density for t0 and the matching per-sample loss weight."""
    logit_mean: float = ruled(0.0, FINITE)
    """Mean of the logit-normal t0 density."""
    logit_std: float = ruled(1.0, above(0))
    """Std of the logit-normal t0 density."""
    mode_scale: float = ruled(1.29, FINITE)
    """Scale of the `mode` density."""
    rollout_kind: Literal["ode", "simple", "sde", "flow_sde", "cps"] = "flow_sde"
    """Step of the stochastic paths (reference flag `sde_rollout_type`)."""
    noise_scale: float = ruled(0.5, at_least(0))
    """η of the stochastic rollout kinds (reference flag `sde_noise_scale`)."""
    sigma_upper_ratio: float | None = ruled(None, at_least(1))
    """r: aux σ' spans [σ1, min(r·σ0, 1)]. None = up to 1, the reference's actual behaviour."""
    timestep_mode: Literal["grid", "continuous"] = "grid"
    """Model timestep of aux points: the reference's grid round trip, or exactly N·σ'."""


@dataclass
class OptimConfig:
    lr: float = ruled(2e-5, above(0))
    """Peak learning rate (reference: 2e-5 constant)."""
    betas: tuple[float, float] = ruled((0.9, 0.999), between(0, 1, hi_open=True))
    """AdamW betas."""
    eps: float = ruled(1e-8, above(0))
    """AdamW epsilon (0 would divide by zero where a gradient is zero)."""
    weight_decay: float = ruled(1e-4, at_least(0))
    """AdamW decoupled weight decay (reference code 1e-4; its README uses 1e-2)."""
    max_grad_norm: float = ruled(1.0, at_least(0))
    """Global gradient-norm clip; 0 disables clipping."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    """Learning-rate schedule, stepped once per optimizer step."""
    lr_warmup_steps: int = ruled(0, at_least(0))
    """Linear warm-up steps for schedules that have one."""


@dataclass
class EmaConfig:
    decay: float = ruled(0.0, between(0, 1, hi_open=True))
    """Exponential moving average of the trained weights (a LoRA run: of the adapter): after each update
    `ema = decay·ema + (1 − decay)·weights`. 0 = off (the default). It averages over about
    `every / (1 − decay)` optimizer steps: 0.999 suits a few thousand steps, 0.9999 tens of thousands
    (docs/ema.md)."""
    every: int = ruled(1, at_least(1))
    """Update the EMA after every this many optimizer steps (its decay is per update, not per step)."""
    warmup: Literal["none", "power", "linear"] = "none"
    """Warm-up of the decay over the first updates (diffusers' `EMAModel`): `none` = `decay` from the
    first update; `power` = 1 − (1 + n/inv_gamma)^−power; `linear` = (1 + n)/(10 + n); both capped at
    `decay`, floored at `min_decay`; n = k − 1 at the k-th update, and the first update has decay 0 (it
    copies the weights)."""
    power: float = ruled(2 / 3, above(0))
    """Exponent of the `power` warm-up (diffusers' default 2/3; 3/4 warms up faster)."""
    inv_gamma: float = ruled(1.0, above(0))
    """Time scale, in updates, of the `power` warm-up (diffusers' default 1)."""
    min_decay: float = ruled(0.0, between(0, 1, hi_open=True))
    """Floor of the warmed-up decay (`power` and `linear`; diffusers' `min_decay`)."""
    device: Literal["same", "cpu"] = "same"
    """Where the fp32 EMA lives: `same` = beside the weights (one fused update on the device), `cpu` =
    host memory (frees a 4-byte-per-parameter copy on the GPU; each update copies the weights to the
    host, docs/ema.md gives the cost)."""


@dataclass
class TrainConfig:
    max_steps: int = ruled(200, at_least(1))
    """Optimizer steps to train (reference: 5000)."""
    seed: int = ruled(42, at_least(0))
    """Root seed; every random stream (timesteps, noise, aux fractions, data order) derives from it."""
    log_every: int = ruled(10, at_least(1))
    """Read losses to the host and log every this many steps (steps in between never read them)."""
    gradient_accumulation_steps: int = ruled(1, at_least(1))
    """Micro-batches per optimizer step."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast for the transformer forward/backward."""
    on_nonfinite: Literal["error", "skip"] = "error"
    """A NaN/inf loss stops the run naming the step, or skips that update."""


@dataclass
class LoraConfig:
    rank: int = ruled(0, at_least(0))
    """LoRA rank r (peft adapters on the transformer, docs/lora.md). 0 = off: full fine-tuning of every
    weight. With r > 0 only the adapter trains; the base is frozen and stored in
    `train.mixed_precision`'s dtype (bf16 under "bf16": no fp32 copy of frozen weights)."""
    alpha: float | None = ruled(None, above(0))
    """LoRA alpha; the adapter's update is scaled by alpha / rank. None = rank (scale 1, as diffusers'
    SD3 LoRA scripts set it)."""
    dropout: float = ruled(0.0, between(0, 1, hi_open=True))
    """Dropout on the adapter's input in every training forward (rollout included); its random stream is
    part of the checkpoint, so resume stays exact."""
    target_modules: list[str] = field(default_factory=lambda: ["attention"])
    """Linear layers that get an adapter: module names (a name matches every module whose path ends with
    it: `to_q` matches attn.to_q and attn2.to_q) and presets: `attention` = attn.to_q, attn.to_k, attn.to_v,
    attn.to_out.0, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj, attn.to_add_out (the joint attention
    of both streams: what diffusers' SD3 LoRA script targets; SD3.5-M's `attn2` is not in it); `mlp` = the
    feed-forward Linears ff.net.0.proj, ff.net.2, ff_context.net.0.proj, ff_context.net.2;
    `attention+mlp` = both."""
    init: str = ruled("true", lora_init())
    """peft's `init_lora_weights`: "true" (Kaiming A, zero B: the adapter starts as a no-op), "gaussian"
    (normal A with std 1/r, zero B; diffusers' SD3 scripts), "orthogonal" (even rank; starts non-zero),
    "false" (random A and B, for tests), or "pissa" / "pissa_niter_N" / "olora", which move the top
    singular (QR) directions of each base weight into the adapter and leave the residual as the frozen
    base (exports convert the adapter back to a delta on the original base, docs/lora.md)."""


@dataclass
class CheckpointConfig:
    every: int = ruled(100, at_least(0))
    """Save a checkpoint every this many steps (0 = only at the end; reference: 500)."""
    total_limit: int | None = ruled(None, at_least(1))
    """Keep at most this many `checkpoints/step-N` folders (oldest removed first)."""


@dataclass
class AccelConfig:
    mode: Literal["fast", "reference"] = "fast"
    """`reference` runs the reference's step semantics as the baseline (grad-enabled 2B rollout,
    K serial aux forwards, full checkpointing, eager math); `fast` applies the switches below."""
    rollout_reuse_cond: bool = True
    """Reuse the main forward's detached output as the conditional CFG branch."""
    batched_aux: bool = True
    """All aux points in one forward instead of K serial forwards."""
    aux_chunk: int = ruled(0, at_least(0))
    """Largest aux forward batch (0 = all at once); backward per chunk is exact."""
    fuse_main_into_aux: bool = False
    """Run the main batch in the same grad forward as the (first chunk of the) aux points: one larger
    forward instead of two. Needs `rollout_reuse_cond = false` (the rollout then computes the conditional
    CFG branch itself: one extra no-grad conditional forward) and `batched_aux = true`."""
    compile: bool | None = None
    """torch.compile each transformer block (fullgraph). None (`"none"` in TOML) = on where it pays:
    on with CUDA, off on CPU (compiling costs more than a CPU demo run saves)."""
    cuda_graphs: bool | None = None
    """Capture and replay the no-grad rollout forward, one graph per bucket shape (CUDA only).
    None = on with CUDA, off on CPU."""
    attention: Literal["auto", "fa3", "sdpa_cudnn", "sdpa_flash", "sdpa"] = "auto"
    """Attention backend; `auto` picks FlashAttention-3 when importable, else the best SDPA."""
    float8: bool = False
    """torchao float8 training on the large Linear layers (CUDA, sm_89+)."""
    float8_recipe: Literal["tensorwise", "rowwise", "rowwise_with_gw_hp"] = "tensorwise"
    """torchao float8 scaling recipe."""
    optimizer: Literal["adamw", "adamw8bit", "adamw_fp8"] = "adamw"
    """Optimizer state precision (low-bit states from torchao)."""
    grad_checkpointing: Literal["none", "full", "selective"] = "none"
    """Activation checkpointing of transformer blocks."""
    fused_kernels: bool | None = None
    """Fused CFG + aux-points + loss kernels (Triton on CUDA; their eager twins on CPU). None = on with
    CUDA, off on CPU, where the plain eager math is the faster exact path (the twins pay custom-op dispatch)."""
    aux_kernel: Literal["auto", "triton", "cuda", "eager"] = "auto"
    """Implementation of the fused aux-points kernel."""


@dataclass
class LogConfig:
    tensorboard: bool = True
    """Write TensorBoard scalars under `<output_dir>/tensorboard`."""
    progress: bool = True
    """Show a progress bar."""
    plot: bool = True
    """Refresh `plots/loss.png` at each checkpoint and at the end."""
    sample_every: int | None = ruled(None, at_least(0))
    """Render the fixed prompt grid every this many steps (0 = never). None (`"none"` in TOML) = every
    50 steps for the embedded demo (a preset trained on the generated demo set), never otherwise."""
    plan_memory: bool | None = None
    """Log the step's predicted peak memory at start-up (`soar-fast plan`'s fake-tensor step) and, on
    CUDA, the measured peak beside it at the first log step. None (`"none"` in TOML) = on with CUDA
    (seconds, against minutes of loading weights), off on CPU (planning the tiny demo step takes ~4 s,
    running it 0.1 s)."""


@dataclass
class ParallelConfig:
    strategy: Literal["none", "ddp", "fsdp2"] = "none"
    """Data parallelism across processes started by torchrun."""
    timeout_s: int = ruled(600, at_least(1))
    """Collective timeout: a failed rank ends the group instead of hanging it."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; `auto` = NCCL on CUDA, gloo on CPU."""
    fsdp_param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """FSDP2 compute dtype of the all-gathered weights; `auto` = bfloat16 when
    `train.mixed_precision = "bf16"` on CUDA, else the storage dtype (CPU always float32)."""
    fsdp_reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    """FSDP2 dtype of the gradient reduce-scatter (float32 keeps the sum exact to fp32 rounding)."""
    fsdp_reshard_after_forward: bool = True
    """FSDP2: free the gathered weights after each forward (ZeRO-3); False keeps them until
    backward (ZeRO-2-like: more memory, fewer all-gathers for the step's three forwards)."""


@dataclass
class EvalConfig:
    dataset: Literal["geneval", "ocr", "pickscore", "drawbench", "plain"] = "plain"
    """Prompt-file format to read: GenEval JSONL, OCR/PickScore/DrawBench/plain text (one prompt per line)."""
    prompts: str | None = None
    """Prompt file (docs/eval.md says where to get the benchmark sets). None = `prompt_list`."""
    prompt_list: list[str] = field(default_factory=list)
    """Prompts given in the config itself, used when `prompts` is not set."""
    limit: int = ruled(0, at_least(0))
    """Use only the first N rows (0 = all)."""
    images_per_prompt: int = ruled(1, at_least(1))
    """Images sampled per prompt row (each with its own seed)."""
    scorers: list[str] = field(default_factory=list)
    """Scorers to run (comma-separated on the command line): clipscore, pickscore, aesthetic, hpsv2,
    imagereward, ocr, geneval. Empty = sample only."""
    weights: dict[str, str] = field(default_factory=dict)
    """Local weight path per scorer: `eval.weights.clipscore = "/models/clip-vit-l-14"`."""
    geneval_command: str | None = None
    """Shell command running GenEval's detector on the saved images; placeholders {images}, {results},
    {weights} (docs/eval.md)."""
    steps: int = ruled(40, at_least(1))
    """Sampler steps (reference evaluation: 40)."""
    cfg_scale: float = ruled(4.5, FINITE)
    """Guidance scale with an empty-string negative prompt (reference evaluation: 4.5); <= 1 = no CFG."""
    resolution: int | None = ruled(None, image_side())
    """Square image side in pixels. None = the training side `model.resolution`: the run's own when
    sampling a soar-fast run (docs/eval.md), else this config's (reference evaluation: 512)."""
    max_sequence_length: int | None = ruled(None, at_least(1))
    """T5 tokens at sampling time. None = the training length `data.max_sequence_length`, the run's
    own when sampling a soar-fast run, else this config's (reference: trains at 77, evaluates at 256)."""
    batch_size: int = ruled(8, at_least(1))
    """Images per sampler batch (with CFG, twice as many transformer rows)."""
    seed: int = ruled(0, at_least(0))
    """Base seed; image i of row r uses seed + r * images_per_prompt + i."""
    checkpoint: str | None = None
    """A `checkpoints/step-N` or `transformer/` folder to sample with instead of the base weights, or a
    LoRA run's `lora/` (or a checkpoint holding one): that adapter on its base, merged."""
    use_ema: bool = False
    """Sample with the EMA of the trained weights (`ema.decay` > 0 in training) instead of the weights
    themselves: `eval.checkpoint`'s `ema/` (a `checkpoints/step-N` folder) or the `transformer_ema/`
    beside its `transformer/` (an exported run); for a LoRA run the EMA of the adapter (`ema/` over the
    checkpoint's `lora/`, or the run's `lora_ema/`), merged into its base. Not the scorers' `eval.weights`."""
    compile: bool = True
    """Compile each transformer block and replay the sampler forward from a CUDA graph; CUDA only."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Transformer, text encoder and VAE dtype: auto = bfloat16 on CUDA, float32 on CPU."""
    preview_prompts: list[str] = field(default_factory=list)
    """Training previews (`log.sample_every`): prompts of the grid; empty = a built-in list of four."""
    preview_steps: int = ruled(20, at_least(1))
    """Training previews: sampler steps (at `model.resolution`, `cfg_scale`, seeds `seed`...)."""
    preview_ema: bool = False
    """Training previews: also render the grid with the EMA weights (`samples/step-N-ema.png`, TensorBoard
    `samples_ema`) beside the live one; needs `ema.decay` > 0."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    soar: SoarConfig = field(default_factory=SoarConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    log: LogConfig = field(default_factory=LogConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
