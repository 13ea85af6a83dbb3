"""What `sample` and `eval` share around the loop: rows from the config, the distributed session,
and the run description written next to the results."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from soar_fast.config import Config, EvalConfig
from soar_fast.config_io import ConfigError
from soar_fast.eval.partition import DistEnv, dist_env, eval_device, init_distributed
from soar_fast.eval.prompts import PromptRow, load_prompts, rows_from_list

log = logging.getLogger(__name__)


def config_rows(cfg: EvalConfig) -> list[PromptRow]:
    """`eval.prompts` in `eval.dataset`'s format, else `eval.prompt_list`; `eval.limit` applied."""
    if cfg.prompts:
        return load_prompts(cfg.prompts, cfg.dataset, cfg.limit)
    if not cfg.prompt_list:  # `from_run.sampling_config` explains the case of a run first
        raise ConfigError("no prompts: set eval.prompts (a prompt file) or eval.prompt_list")
    rows = rows_from_list(cfg.prompt_list)
    return rows[:cfg.limit] if cfg.limit > 0 else rows


@contextlib.contextmanager
def session(cfg: Config) -> Iterator[tuple[DistEnv, torch.device]]:
    """(rank info, device) inside torchrun's process group when W > 1; the group is left as found."""
    env = dist_env()
    device = eval_device(env)
    if device.type == "cpu" and cfg.run.cpu_threads > 0:
        torch.set_num_threads(cfg.run.cpu_threads)  # see run.cpu_threads: tiny CPU matmuls lose with more
    created = init_distributed(env, device, cfg.parallel.timeout_s)
    if env.is_main:
        os.makedirs(cfg.run.output_dir, exist_ok=True)
    try:
        yield env, device
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def run_info(cfg: Config, env: DistEnv, n_rows: int, n_images: int, seconds: float) -> dict[str, Any]:
    e = cfg.eval
    return {"dataset": e.dataset, "prompts": e.prompts, "rows": n_rows, "images": n_images,
            "images_per_prompt": e.images_per_prompt, "model": cfg.model.path or f"preset:{cfg.model.preset}",
            "checkpoint": e.checkpoint, "use_ema": e.use_ema, "steps": e.steps, "cfg_scale": e.cfg_scale, "resolution": e.resolution,
            "max_sequence_length": e.max_sequence_length, "seed": e.seed, "world_size": env.world,
            "sampling_seconds_rank0": round(seconds, 2)}
