"""The Trainer, assembled in a fixed order of small steps (torchtitan style):

  resolve device → random streams → data source → transformer (preset sized to the data, or
  `model.path`) → LoRA adapter (`lora.rank > 0`) → sigma grid → resolve `[accel]` once → eager step
  pieces → `apply_accel` → DDP/FSDP2 (`parallel.wrap`) → step options → trainable parameters →
  optimizer → LR schedule → EMA of the optimizer's parameters (`[ema]`, sharded like them; with LoRA
  the adapter's)

Each builder takes only its own config section. `Trainer.train_step` is one optimizer step
(accumulation, clipping, schedule) around `soar_step`; the loop with logging, checkpoints and
signals is `loop.py`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from soar_fast.accel import apply_accel, resolve_accel
from soar_fast.config import Config, ModelConfig, RunConfig
from soar_fast.models.lora import apply_lora, lora_info
from soar_fast.models.transformer import (
    build_transformer,
    image_tokens,
    scheduler_config,
    text_tokens,
    velocity_fn,
)
from soar_fast.parallel import (
    Dist,
    after_optimizer_step,
    apply_data_parallel,
    float8_fsdp_options,
    global_counts,
    grad_scale,
    gradient_sync,
    single_process,
    unwrap,
)
from soar_fast.seeds import stream_seed
from soar_fast.soar import LossParts, SigmaGrid, draw
from soar_fast.train.ema import Ema, build_ema
from soar_fast.train.optim import build_lr_scheduler, build_optimizer
from soar_fast.train.rng import RngStreams
from soar_fast.train.step import StepFns, StepOptions, drop_conditions, soar_step, step_options

log = logging.getLogger(__name__)


def resolve_device(run: RunConfig) -> torch.device:
    if run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if run.device == "cuda" and not torch.cuda.is_available():
        from soar_fast.config_io import ConfigError

        raise ConfigError("run.device: 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(run.device)


def data_dims(source: Any) -> dict[str, int]:
    """The widths the data gives the transformer (a preset adapts to them; a loaded model is checked)."""
    return {"in_channels": int(source.latent_channels), "joint_attention_dim": int(source.null_embeds.shape[-1]),
            "pooled_projection_dim": int(source.null_pooled.shape[-1])}


def build_model(model_cfg: ModelConfig, source: Any, *, seed: int, device: torch.device) -> torch.nn.Module:
    """The transformer sized to the data (a preset adapts its input widths; a loaded model is checked).

    Weights are fp32 masters (a LoRA base is then frozen in the compute dtype, `build_lora`);
    `model.dtype` is the dtype of the exported `transformer/`.
    """
    model = build_transformer(model_cfg, seed=seed, **data_dims(source))
    return model.to(device=device, dtype=torch.float32).train()


def build_lora(cfg: Config, model: torch.nn.Module, source: Any, *, init_seed: int) -> torch.nn.Module:
    """`[lora]` on `model` in place: only the adapter trains, the frozen base is stored in
    `train.mixed_precision`'s dtype (no fp32 copy of weights that never change). Records the base
    (preset + seed + data widths, or `model.path`) so the adapter can be rebuilt on it later."""
    base = {"preset": cfg.model.preset, "path": cfg.model.path, "seed": init_seed, "dims": data_dims(source)}
    info = lora_info(cfg.lora, model, init_seed=stream_seed(cfg.train.seed, 0, "lora_init"), base=base)
    base_dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float32
    return apply_lora(model, info, base_dtype=base_dtype)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer updates, clipping clips (and a weight average would average): every
    parameter of a full fine-tune, the adapter's alone with LoRA. Taken after DDP/FSDP2 wrapping
    (FSDP2 replaces the parameters with their shards)."""
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class StepResult:
    """One optimizer step's device-side numbers (reading them is a host sync)."""

    loss: torch.Tensor
    loss_main: torch.Tensor
    loss_aux: torch.Tensor
    grad_norm: torch.Tensor
    samples: int
    tokens: int


@dataclass
class Trainer:
    cfg: Config
    device: torch.device
    model: torch.nn.Module
    fns: StepFns
    opts: StepOptions
    grid: SigmaGrid
    source: Any
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    rngs: RngStreams
    params: list[torch.nn.Parameter] = field(default_factory=list)
    """The trainable parameters, given to the optimizer (`trainable_parameters`)."""
    rank: int = 0
    world: int = 1
    step: int = 0
    dist: Dist = field(default_factory=Dist)
    predicted_peak_bytes: int | None = None
    """The planner's predicted peak of one step on this rank (`log.plan_memory`), for the log."""
    ema: Ema | None = None
    """The EMA of the trained parameters (`ema.decay` > 0), updated in `apply_update`."""
    _batches: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, cfg: Config, *, source: Any = None, rank: int = 0, world: int = 1,
              dist: Dist | None = None, model: torch.nn.Module | None = None) -> Trainer:
        """`dist`: this process's place in the job (`parallel.init_distributed`); None = one process
        (then `rank`/`world` only shard the data, as tests of one rank's view do). `model`: the
        transformer, already built in fp32 on the device (the planner's fake-tensor one); None =
        `build_model`."""
        if dist is not None:
            device, rank, world = dist.device, dist.rank, dist.world
        else:
            device = resolve_device(cfg.run)
            dist = single_process(device)
        # LoRA dropout draws from the global RNG, which then becomes part of the checkpointed state.
        rngs = RngStreams(cfg.train.seed, rank, device, with_global=cfg.lora.rank > 0 and cfg.lora.dropout > 0)
        if source is None:
            from soar_fast.data.build import build_source

            source = build_source(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=cfg.run.output_dir,
                                  rank=rank, world=world, device=device, dtype=torch.float32)
        # Same initial weights on every rank: the init seed ignores the rank.
        init_seed = stream_seed(cfg.train.seed, 0, "init")
        if model is None:
            model = build_model(cfg.model, source, seed=init_seed, device=device)
        if cfg.lora.rank > 0:
            model = build_lora(cfg, model, source, init_seed=init_seed)
        grid = SigmaGrid.from_scheduler_config(scheduler_config(cfg.model)).to(device)
        accel = resolve_accel(cfg.accel, device)
        if cfg.parallel.strategy == "fsdp2" and accel.cuda_graphs:
            # FSDP2's forward all-gathers (and frees) the weights in hooks: not capturable in a CUDA graph.
            log.warning("accel.cuda_graphs: off under parallel.strategy = fsdp2 (forwards all-gather weights)")
            accel = replace(accel, cuda_graphs=False)
        forward = velocity_fn(model)
        fns = apply_accel(model, StepFns(forward=forward, rollout_forward=forward), accel, device=device,
                          float8_all_gather=float8_fsdp_options(cfg.parallel.strategy, accel.float8_recipe)[
                              "enable_fsdp_float8_all_gather"])
        # Data parallelism last (torchtitan's order). FSDP2 shards `model` in place; DDP returns a wrapper
        # that the gradient-carrying forwards must go through (its hooks all-reduce the gradients); the
        # no-grad rollout forward keeps the bare module.
        wrapped = apply_data_parallel(model, cfg.parallel, dist, autocast_bf16=cfg.train.mixed_precision == "bf16")
        if wrapped is not model:
            fns = replace(fns, forward=velocity_fn(wrapped))
        model = wrapped
        opts = step_options(accel, mixed_precision=cfg.train.mixed_precision)
        params = trainable_parameters(model)
        optimizer = build_optimizer(cfg.optim, params, state=accel.optimizer, device=device)
        lr_scheduler = build_lr_scheduler(cfg.optim, optimizer, cfg.train.max_steps)
        ema = build_ema(cfg.ema, model, optimizer)
        return cls(cfg=cfg, device=device, model=model, fns=fns, opts=opts, grid=grid, source=source,
                   optimizer=optimizer, lr_scheduler=lr_scheduler, rngs=rngs, params=params, rank=rank, world=world,
                   dist=dist, ema=ema)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that logs, plots, shows progress and writes exports."""
        return self.dist.is_main

    @property
    def sharded_checkpoints(self) -> bool:
        """Checkpoints in torch.distributed.checkpoint format (FSDP2 or several processes)."""
        from soar_fast.train.resume import uses_sharded_checkpoints

        return uses_sharded_checkpoints(self.cfg.parallel, self.dist)

    # ------------------------------------------------------------------------------------------ step

    def next_batch(self):
        if self._batches is None:
            self._batches = iter(self.source)
        return next(self._batches)  # the source is endless: it moves to the next epoch by itself

    def train_step(self) -> StepResult:
        """One optimizer step: `train.gradient_accumulation_steps` micro-batches, clip, AdamW, schedule."""
        accum = max(int(self.cfg.train.gradient_accumulation_steps), 1)
        soar, data = self.cfg.soar, self.cfg.data
        null_e = self.source.null_embeds.to(self.device)
        null_p = self.source.null_pooled.to(self.device)
        totals: list[LossParts] = []
        samples = tokens = 0
        for micro in range(accum):
            batch = self.next_batch()
            mean = batch.latent_mean.to(self.device, torch.float32)
            z0 = mean
            if batch.latent_std is not None:
                eps = torch.randn(mean.shape, generator=self.rngs["posterior"], device=self.device)
                z0 = mean + batch.latent_std.to(self.device, torch.float32) * eps
            embeds, pooled = batch.prompt_embeds.to(self.device), batch.pooled.to(self.device)
            if data.cond_dropout_rate > 0:
                embeds, pooled = drop_conditions(embeds, pooled, null_e, null_p, data.cond_dropout_rate,
                                                 self.rngs["dropout"])
            draws = draw(z0.shape, generator=self.rngs["soar"], num_points=soar.trajectory_length,
                         num_paths=soar.num_rollout_paths, weighting_scheme=soar.weighting_scheme,
                         logit_mean=soar.logit_mean, logit_std=soar.logit_std, mode_scale=soar.mode_scale,
                         device=self.device)
            # Global counts: one all-reduce per micro-batch; × W undoes DDP/FSDP2's gradient averaging
            # (parallel/counts.py).
            counts = functools.partial(global_counts, d=self.dist) if self.dist.world > 1 else None
            # DDP all-reduces gradients on the last micro-batch only (FSDP2 keeps reduce-scattering each
            # one: skipping it would hold unsharded gradients between micro-batches).
            sync = micro == accum - 1 or self.cfg.parallel.strategy != "ddp"
            with gradient_sync(self.model, sync):
                totals.append(soar_step(self.fns, z0, embeds, pooled, null_e, null_p, draws, self.grid, soar,
                                        self.opts, loss_scale=grad_scale(self.dist) / accum, global_counts=counts))
            samples += z0.shape[0] * self.world
            tokens += z0.shape[0] * self.world * (image_tokens(unwrap(self.model), z0.shape[-2:]) + text_tokens(embeds))
        grad_norm = self.clip_gradients()
        return StepResult(loss=sum(p.loss for p in totals) / accum,
                          loss_main=sum(p.loss_main for p in totals) / accum,
                          loss_aux=sum(p.loss_aux for p in totals) / accum,
                          grad_norm=grad_norm, samples=samples, tokens=tokens)

    def clip_gradients(self) -> torch.Tensor:
        """Global grad norm (device tensor, no sync), clipped to `optim.max_grad_norm` unless 0."""
        params = [p for p in self.params if p.grad is not None]
        max_norm = self.cfg.optim.max_grad_norm
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # FSDP2: the norm of sharded gradients is a DTensor; its value (a collective, no host sync).
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def apply_update(self) -> None:
        self.optimizer.step()
        after_optimizer_step(self.model)  # float8 + FSDP2: next all-gather's weight scales (else no-op)
        if self.ema is not None:
            self.ema.after_step(self.step + 1)  # the loop advances `self.step` after this call
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip_update(self) -> None:
        """Drop this step's gradients (non-finite loss with `train.on_nonfinite = "skip"`); the
        schedule still advances so the LR stays a function of the step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights needed to continue bit for bit (weights go to safetensors)."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(), "rng": self.rngs.state_dict(),
                "data": self.source.state_dict(), "world": self.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("world", 1)) != self.world:
            log.warning("resuming a world-size-%s run on %s ranks: data order and noise will differ",
                        state.get("world"), self.world)
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.rngs.load_state_dict(state["rng"])
        self.source.load_state_dict(state["data"])
        self._batches = None
