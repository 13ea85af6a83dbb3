"""One whole optimizer step of a configured run on fake tensors: `plan_step(cfg) -> StepPlan`.

The transformer is built under `FakeTensorMode` from its config alone (no weight is read, nothing is
allocated), the trainer is assembled by `Trainer.build` around it exactly as `soar-fast train` does,
the optimizer state is materialised, and then `Trainer.train_step` (micro-batches of `soar_step`,
clipping) and `Trainer.apply_update` (optimizer step, schedule, zero_grad) run once under torch's
memory tracker and roofline estimator (`soar_fast.plan.tracker`). Peak, phase and split are what the
tracker saw; FLOPs are `soar_fast.accel.flops`'s analytic count of the configured step.

The fake step runs on the CPU. For a CUDA target the device-dependent pieces are those of CUDA where
they change memory — fused AdamW (no per-step temporaries, unlike CPU's foreach AdamW), the `[accel]`
switches resolved for CUDA in the report and FLOPs — while these are not modelled (each a comment in
docs/performance.md): `accel.compile` (AOTAutograd's partitioner saves at most what eager saves, so
eager is the bound), the CUDA-graph pool of the rollout forward, the allocator's 512-byte rounding
(< 0.1% at SD3.5 sizes), the CUDA context and library workspaces (the `--headroom` margin).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from soar_fast.config import Config
from soar_fast.config_io import ConfigError
from soar_fast.plan.gpus import GPU
from soar_fast.plan.gpus import gpu as gpu_named

TEXT_CLIP_TOKENS = 77  # CLIP-L ‖ CLIP-G tokens in front of the T5 tokens (soar_fast.data.source.TrainBatch)


@dataclass(frozen=True)
class RunShapes:
    """The shapes one rank's step sees: latents (B, C, h, w), text (B, L, D), pooled (B, P)."""

    batch: int
    channels: int
    latent_hw: tuple[int, int]
    text_tokens: int
    embed_dim: int
    pooled_dim: int


def run_shapes(cfg: Config, model_config: dict[str, Any]) -> RunShapes:
    from soar_fast.models.presets import DEFAULT_VAE_FACTOR, model_geometry

    geometry = model_geometry(cfg.model.preset, cfg.model.path, cfg.model.vae)
    side = int(cfg.model.resolution) // (geometry.vae_factor if geometry else DEFAULT_VAE_FACTOR)
    return RunShapes(batch=int(cfg.data.batch_size), channels=int(model_config["in_channels"]),
                     latent_hw=(side, side), text_tokens=TEXT_CLIP_TOKENS + int(cfg.data.max_sequence_length),
                     embed_dim=int(model_config["joint_attention_dim"]),
                     pooled_dim=int(model_config["pooled_projection_dim"]))


class ShapeSource:
    """A `TrainSource` of zero batches of `RunShapes` (fake tensors when made under a fake mode)."""

    def __init__(self, shapes: RunShapes) -> None:
        s = self.shapes = shapes
        self.null_embeds = torch.zeros(1, s.text_tokens, s.embed_dim)
        self.null_pooled = torch.zeros(1, s.pooled_dim)
        self.latent_channels, self.batch_size, self.steps_per_epoch = s.channels, s.batch, 1

    def __iter__(self) -> Iterator[Any]:
        from soar_fast.data.source import TrainBatch

        s = self.shapes
        latent = (s.batch, s.channels, *s.latent_hw)
        while True:
            yield TrainBatch(latent_mean=torch.zeros(latent), latent_std=torch.ones(latent),
                             prompt_embeds=torch.zeros(s.batch, s.text_tokens, s.embed_dim),
                             pooled=torch.zeros(s.batch, s.pooled_dim))

    def set_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class StepPlan:
    """The predicted peak of one optimizer step on one rank, and its cost.

    peak_bytes: the step's peak of live tensor bytes; phase: where it is reached (`main forward`,
    `rollout forward`, `aux kernel`, `aux forward`, `backward`, `optimizer`, `data`). params, grads,
    optimizer, activations: the split at the peak (activations include temporaries and inputs; optimizer
    includes the `[ema]` weights kept on the device).
    flops: executed FLOPs of the step (every forward, backward, recompute; `soar_fast.accel.flops`).
    step_time_s: roofline lower bound on the eager step on `gpu` (per op, FLOPs at the matrix peak or
    bytes at the bandwidth, whichever is slower); compute_bound_s: `flops` at the bf16 peak alone
    (a bound no fusion can beat).
    """

    peak_bytes: int
    phase: str
    params: int
    grads: int
    optimizer: int
    activations: int
    flops: int
    step_time_s: float | None
    compute_bound_s: float | None
    gpu: str | None
    device: str
    rank: int = 0
    world: int = 1
    phase_peaks: dict[str, int] = field(default_factory=dict)
    accel: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_config(cfg: Config) -> dict[str, Any]:
    """The transformer's diffusers config (the folder's config.json, or the preset's)."""
    from soar_fast.data.errors import DataError
    from soar_fast.data.model_dims import transformer_config

    try:
        return transformer_config(cfg.model)
    except DataError as e:  # a missing config.json
        raise ConfigError(f"model.path: {e}") from None


def _target(cfg: Config) -> torch.device:
    return torch.device("cpu" if cfg.run.device == "cpu" else "cuda")


def step_flops_of(cfg: Config, config: dict[str, Any], shapes: RunShapes, accel: Any) -> int:
    """Executed FLOPs of one optimizer step per `soar_fast.accel.flops` (transformer matmuls)."""
    from soar_fast.accel.flops import fast_work, reference_work, sft_work, step_flops
    from soar_fast.models.transformer import image_tokens

    B = shapes.batch
    aux_rows = B * int(cfg.soar.trajectory_length) * int(cfg.soar.num_rollout_paths)
    checkpointing = "full" if accel.grad_checkpointing == "reference" else accel.grad_checkpointing
    frozen = int(cfg.lora.rank) > 0  # LoRA: no weight gradients of the base
    if cfg.soar.objective == "sft":
        work = sft_work(B, checkpointing=checkpointing, frozen_weights=frozen)
    elif accel.mode == "reference":
        work = reference_work(B, aux_rows)
    else:
        work = fast_work(B, aux_rows, rollout_reuse_cond=accel.rollout_reuse_cond, checkpointing=checkpointing,
                         frozen_weights=frozen)
    n_image = image_tokens(config, shapes.latent_hw)
    accum = max(int(cfg.train.gradient_accumulation_steps), 1)
    return accum * step_flops(config, n_image, shapes.text_tokens, work)


def _planned_optimizer(cfg: Config, params: list[torch.nn.Parameter], choice: str,
                       target: torch.device) -> torch.optim.Optimizer:
    from soar_fast.train.optim import build_optimizer

    if choice == "adamw":
        return build_optimizer(cfg.optim, params, state="adamw", device=target)
    from soar_fast.plan.low_bit import LowBitAdamWStates

    return LowBitAdamWStates(params, choice, lr=cfg.optim.lr)


@contextlib.contextmanager
def _fake_process_group(world: int) -> Iterator[Any]:
    """A `Dist` of rank 0 in a fake process group of `world` ranks (collectives return at once), or
    None for one rank."""
    if world <= 1:
        yield None
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from soar_fast.parallel import Dist

    if dist.is_initialized():
        raise ConfigError("soar-fast plan --world: a process group is already initialised in this process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield Dist(rank=0, world=world, device=torch.device("cpu"), backend="fake")
    finally:
        dist.destroy_process_group()


def plan_step(cfg: Config, *, gpu: GPU | str | None = None, roofline: bool = True, world: int = 1) -> StepPlan:
    """Predict one optimizer step of `cfg` on one rank (see the module docstring). `world` > 1: rank 0
    of `world` FSDP2 ranks (`parallel.strategy = "fsdp2"`), under FSDPMemTracker."""
    from diffusers import SD3Transformer2DModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from soar_fast.accel import resolve_accel
    from soar_fast.plan.tracker import Roofline, StepMemTracker, step_fsdp_mem_tracker
    from soar_fast.train.optim import build_lr_scheduler
    from soar_fast.train.phases import instrument, timing
    from soar_fast.train.trainer import Trainer

    if cfg.soar.objective == "soar" and int(cfg.soar.num_rollout_paths) != 1:
        raise ConfigError("soar.num_rollout_paths: the planner needs 1 (with stochastic paths the number of aux "
                          "rows depends on the drawn timesteps, which fake tensors do not have)")
    if world > 1 and cfg.parallel.strategy == "ddp":
        raise ConfigError("parallel.strategy = 'ddp': the planner shards with fsdp2 only; plan DDP as one rank "
                          "(plus one gradient copy for its buckets)")
    gpu = gpu_named(gpu) if isinstance(gpu, str) else gpu
    target = _target(cfg)
    resolved = resolve_accel(cfg.accel, target)  # bad switch combinations are config errors here
    config = model_config(cfg)
    shapes = run_shapes(cfg, config)

    # The fake step runs on the CPU: compile / CUDA graphs are CUDA-only and not modelled; the
    # optimizer is built for the target below.
    parallel = replace(cfg.parallel, strategy="fsdp2" if world > 1 else "none")
    if world > 1 and cfg.parallel.fsdp_param_dtype == "auto":
        # FSDP2's "auto" all-gather dtype as decided for the target device, not for the fake CPU one.
        from soar_fast.parallel.wrap import mixed_precision_dtypes

        param_dtype, _ = mixed_precision_dtypes(cfg.parallel, autocast_bf16=cfg.train.mixed_precision == "bf16",
                                                device=target)
        parallel = replace(parallel, fsdp_param_dtype="bfloat16" if param_dtype == torch.bfloat16 else "float32")
    build_cfg = replace(cfg, run=replace(cfg.run, device="cpu"), parallel=parallel,
                        accel=replace(cfg.accel, optimizer="adamw", compile=False, cuda_graphs=False))
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = SD3Transformer2DModel.from_config(config).train()
        source = ShapeSource(shapes)
    with _fake_process_group(world) as d:
        # Built outside the fake mode so the sigma grid holds real values (it is read on the host).
        trainer = Trainer.build(build_cfg, source=source, model=model, dist=d)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        trainer.optimizer = _planned_optimizer(cfg, params, resolved.optimizer, target)
        trainer.lr_scheduler = build_lr_scheduler(cfg.optim, trainer.optimizer, cfg.train.max_steps)
        with fake:
            # A steady-state step: the optimizer state exists before the step begins.
            for p in params:
                p.grad = torch.zeros_like(p)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            instrument(trainer)
            if d is None:
                tracker = StepMemTracker()
                tracker.track_external(trainer.model, trainer.optimizer)
            else:
                tracker = step_fsdp_mem_tracker(trainer.model, trainer.optimizer)
            # The EMA (`ema.device = "same"`) is resident state like the optimizer's; built outside the tracker.
            ema = list(trainer.ema.shadow) if trainer.ema is not None and cfg.ema.device == "same" else []
            tracker.track_external(source.null_embeds, source.null_pooled)
            tracker.track_resident(*ema)
            trainer.fns = replace(trainer.fns, forward=tracker.each_call_fresh(trainer.fns.forward),
                                  rollout_forward=tracker.each_call_fresh(trainer.fns.rollout_forward))
            estimator = Roofline(gpu) if (roofline and gpu is not None) else None
            with timing(tracker.phase), tracker, (estimator if estimator is not None else _null()):
                trainer.train_step()
                trainer.apply_update()
    split = tracker.peak_split()
    flops = step_flops_of(cfg, config, shapes, resolved)
    report = resolved.as_dict()
    return StepPlan(
        peak_bytes=split["total"], phase=tracker.peak_phase, params=split["params"], grads=split["grads"],
        optimizer=split["optimizer"], activations=split["activations"], flops=flops,
        step_time_s=estimator.seconds if estimator is not None else None,
        compute_bound_s=flops / gpu.bf16_flops if gpu is not None else None,
        gpu=gpu.name if gpu is not None else None, device=target.type, rank=0, world=max(int(world), 1),
        phase_peaks=dict(tracker.phase_peaks), accel=report,
        run={"preset": None if cfg.model.path else cfg.model.preset, "path": cfg.model.path,
             "resolution": cfg.model.resolution, "batch_size": shapes.batch,
             "trajectory_length": cfg.soar.trajectory_length, "mixed_precision": cfg.train.mixed_precision,
             "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps})


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()
