"""`soar-fast train`: prepare the output folder, build the Trainer, resume, fit, report."""

from __future__ import annotations

import logging
import os
import platform
import shutil
from dataclasses import replace
from typing import Any

from soar_fast.config import Config
from soar_fast.config_io import ConfigError, save_config
from soar_fast.models.folder import check_model_folder

log = logging.getLogger("soar_fast.train")

# What a run writes (and what `run.overwrite` may delete); demo data is kept, it is reproducible.
RUN_OUTPUTS = ("checkpoints", "transformer", "transformer_ema", "lora", "lora_ema", "tensorboard", "plots",
               "metrics.jsonl", "samples", "sample", "eval")


def main_train(cfg: Config, args: Any) -> int:
    """Train per `cfg`. `args.resume`: None (fresh run), "" (latest checkpoint of `run.output_dir`,
    or a fresh run when there is none) or a path (a `step-N` folder or a run folder).

    Under torchrun every process runs this (docs/distributed.md): rank 0 alone prepares the folder,
    logs and writes; a failure on any rank ends every rank (`parallel.fail_fast`)."""
    from soar_fast.accel.resolve import check_switches
    from soar_fast.data.errors import DataError
    from soar_fast.parallel import fail_fast, init_distributed, shutdown
    from soar_fast.train.loop import NonFiniteLossError
    from soar_fast.train.trainer import resolve_device

    # Switch combinations that cannot work, and an incomplete model folder, are errors before anything
    # heavy is built.
    check_switches(cfg.accel)
    check_model_folder(cfg.model.path, encodes=cfg.data.cache is None,
                       why="training without data.cache encodes each batch")
    check_lora_targets(cfg)
    try:
        d = init_distributed(cfg.parallel, device_type=resolve_device(cfg.run).type)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not d.is_main:
        logging.getLogger("soar_fast").setLevel(logging.WARNING)
    import torch

    threads = torch.get_num_threads()
    try:
        with fail_fast(d, user_errors={ConfigError: 2, DataError: 1, NonFiniteLossError: 1}):
            code = _train(cfg, args, d)
    finally:
        torch.set_num_threads(threads)  # `run.cpu_threads` is process-wide: give in-process callers theirs back
    shutdown(d)
    return code


def _train(cfg: Config, args: Any, d: Any) -> int:
    from soar_fast.train.checkpoint import latest_checkpoint, remove_partial_saves, resolve_checkpoint

    out = cfg.run.output_dir
    resume = getattr(args, "resume", None)
    checkpoint = None
    has_final = any(os.path.isdir(os.path.join(out, name)) for name in ("transformer", "lora"))
    if resume is None:
        if latest_checkpoint(out) is not None or has_final:
            if not cfg.run.overwrite:
                way = ("pass --resume to continue that run, " if latest_checkpoint(out) is not None else "")
                raise ConfigError(f"run.output_dir={out} already holds a run (checkpoints/, transformer/ or lora/): {way}"
                                  "--run.overwrite=true replaces it, or choose another run.output_dir")
            for name in RUN_OUTPUTS if d.is_main else ():
                path = os.path.join(out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
    else:
        if d.is_main:
            remove_partial_saves(out)
        d.barrier()
        checkpoint = resolve_checkpoint(resume) if resume else latest_checkpoint(out)
        if checkpoint is None and has_final and not cfg.run.overwrite:
            raise ConfigError(f"run.output_dir={out} holds an exported transformer/ or lora/ but no checkpoint to resume "
                              "from: --run.overwrite=true replaces it, or choose another run.output_dir")
        if checkpoint is None:
            log.info("--resume: no checkpoint in %s yet; starting from step 0", out)

    if d.is_main:
        os.makedirs(out, exist_ok=True)
        save_config(cfg, os.path.join(out, "config.toml"))
    d.barrier()
    import torch

    if cfg.run.cpu_threads > 0:
        torch.set_num_threads(cfg.run.cpu_threads)
    log_environment()

    from soar_fast.models.transformer import count_parameters
    from soar_fast.train.checkpoint import load_state, load_weights
    from soar_fast.train.ema import restore_ema
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    predicted = log_predicted_peak(cfg, d)
    trainer = Trainer.build(cfg, dist=d)
    trainer.predicted_peak_bytes = predicted
    log.info("model: %s, %.2fM parameters (%.2fM trained%s), on %s; step: %s",
             cfg.model.path or f"preset {cfg.model.preset}", count_parameters(trainer.model) / 1e6,
             sum(p.numel() for p in trainer.params) / 1e6, f", LoRA rank {cfg.lora.rank}" if cfg.lora.rank else "",
             trainer.device, trainer.opts)
    if checkpoint is not None:
        from soar_fast.train.resume import (
            is_sharded_checkpoint,
            restore_full_checkpoint,
            restore_sharded_checkpoint,
        )

        if is_sharded_checkpoint(checkpoint.path):      # DCP: any strategy, any number of processes
            restore_sharded_checkpoint(trainer, checkpoint.path)
        elif d.has_group:                                # a one-process checkpoint into DDP/FSDP2
            restore_full_checkpoint(trainer, checkpoint.path)
        else:
            load_weights(trainer.model, checkpoint)
            trainer.load_state_dict(load_state(checkpoint))
        restore_ema(trainer.ema, checkpoint.path, step=trainer.step)
        log.info("resumed from %s (step %d)", checkpoint.path, trainer.step)
    status = fit(trainer)
    if status == "stopped":
        log.info("stopped at step %d; outputs in %s", trainer.step, out)
    else:
        written = [n for n in ("metrics.jsonl", "plots/loss.png", "checkpoints/", "transformer/", "transformer_ema/",
                               "lora/", "lora_ema/")
                   if os.path.exists(os.path.join(out, n))]
        log.info("done: %d steps; outputs in %s (%s)", trainer.step, out, ", ".join(written))
    return 0


def check_lora_targets(cfg: Config) -> None:
    """`lora.target_modules` against the transformer's layers, on a weightless copy built from its config
    (a bad name is a config error before data, encoders or weights are loaded)."""
    if cfg.lora.rank == 0:
        return
    import json

    from soar_fast.models.lora import check_targets, skeleton
    from soar_fast.models.transformer import preset_config, transformer_folder

    if cfg.model.path:
        with open(os.path.join(transformer_folder(cfg.model.path), "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    else:
        config = preset_config(cfg.model.preset)
    check_targets(cfg.lora.target_modules, skeleton(config))


def log_predicted_peak(cfg: Config, d: Any) -> int | None:
    """`log.plan_memory`: the planner's peak for this rank, logged before any weight is allocated.
    A planner failure is a warning: it never stops a run."""
    from soar_fast.train.trainer import resolve_device

    on = cfg.log.plan_memory if cfg.log.plan_memory is not None else resolve_device(cfg.run).type == "cuda"
    if not on or not d.is_main:
        return None
    from soar_fast.plan import plan_step

    world = d.world if cfg.parallel.strategy == "fsdp2" else 1
    single = replace(cfg, parallel=replace(cfg.parallel, strategy="none"))
    try:
        plan = plan_step(single, roofline=False, world=world)
    except Exception as e:  # noqa: BLE001 - the prediction is advice; training goes on without it
        log.warning("memory: no prediction (%s: %s)", type(e).__name__, e)
        return None
    log.info("memory: predicted peak %.2f GiB per rank in %s (parameters %.2f, gradients %.2f, optimizer %.2f, "
             "activations %.2f GiB; soar-fast plan)", plan.peak_bytes / 2**30, plan.phase, plan.params / 2**30,
             plan.grads / 2**30, plan.optimizer / 2**30, plan.activations / 2**30)
    return plan.peak_bytes


def log_environment() -> None:
    """Versions and hardware, once at start, so every log says what produced it."""
    import torch

    parts = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    from importlib.metadata import PackageNotFoundError, version

    for name in ("diffusers", "transformers", "triton", "torchao"):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.device_count()}x {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        device = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    log.info("environment: %s; %s", ", ".join(parts), device)
