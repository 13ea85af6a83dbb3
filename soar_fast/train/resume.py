"""The trainer's sharded checkpoints: what goes where, on save and on resume (layout in `parallel/dcp.py`).

Used when `parallel.strategy = "fsdp2"` or more than one process (`uses_sharded_checkpoints`); a
sharded checkpoint is read whatever the current strategy and world size (a one-process run included).
The trainer is duck-typed: `model`, `optimizer`, `lr_scheduler`, `rngs` (`RngStreams`), `source`,
`step`, `dist`, `ema` (or None), `cfg.train.seed`, `cfg.parallel.strategy`.

  state/trainer.pt     rank 0: step, LR scheduler, rank 0's data position, world (weights_only-loadable)
  state/rank-RRRRR.pt  rank r: its RNG streams and its data position
  state/dcp/           model + optimizer, sharded (with LoRA: the adapter and its optimizer state only)
  transformer/         diffusers export of the weights, gathered to rank 0 (with LoRA: lora/, the adapter)
  ema/ema.safetensors  the EMA (`ema.decay` > 0; with LoRA the adapter's), gathered to rank 0: the one EMA
                       format whatever the strategy; on resume every rank reads it and keeps its shard
                       (`train/ema.py`)
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import torch

from soar_fast.config import ParallelConfig
from soar_fast.models.ema_folder import ema_file, write_ema_file
from soar_fast.models.lora import info_of, module_key
from soar_fast.models.lora_io import FOLDER as LORA_FOLDER
from soar_fast.models.lora_io import read_adapter
from soar_fast.parallel.dcp import (
    atomic_folder,
    is_sharded_state,
    load_sharded_state,
    save_sharded_state,
    saved_world,
)
from soar_fast.parallel.env import Dist
from soar_fast.parallel.export import export_adapter, export_transformer
from soar_fast.parallel.wrap import unwrap
from soar_fast.seeds import fresh_root_seed
from soar_fast.train.checkpoint import (
    Checkpoint,
    check_kind,
    checkpoints_dir,
    load_state,
    prune_checkpoints,
    read_transformer_weights,
    remove_partial_saves,
)

__all__ = ["is_sharded_checkpoint", "restore_full_checkpoint", "restore_sharded_checkpoint",
           "save_sharded_checkpoint", "uses_sharded_checkpoints"]

log = logging.getLogger(__name__)


def uses_sharded_checkpoints(cfg: ParallelConfig, d: Dist) -> bool:
    return cfg.strategy == "fsdp2" or d.world > 1


def is_sharded_checkpoint(path: str) -> bool:
    """A `checkpoints/step-N` folder written by `save_sharded_checkpoint`."""
    return is_sharded_state(os.path.join(path, "state"))


def save_sharded_checkpoint(trainer: Any, output_dir: str, step: int, *, total_limit: int | None = None) -> str:
    """Collective: write `checkpoints/step-<step>` atomically (all ranks write, rank 0 renames), then
    prune to `total_limit` on rank 0. Returns the folder."""
    d: Dist = trainer.dist
    if d.is_main:
        remove_partial_saves(output_dir)
    final = os.path.join(checkpoints_dir(output_dir), f"step-{step}")
    data = trainer.source.state_dict()
    lora = info_of(trainer.model) is not None
    with atomic_folder(final, d) as tmp:
        if lora:
            export_adapter(trainer.model, os.path.join(tmp, LORA_FOLDER), d)
        else:
            export_transformer(trainer.model, os.path.join(tmp, "transformer"), d)
        if trainer.ema is not None:
            tensors = trainer.ema.full_tensors(d)  # collective under FSDP2
            if d.is_main:
                write_ema_file(ema_file(tmp), tensors, trainer.ema.meta(step))
        state_dir = os.path.join(tmp, "state")
        save_sharded_state(state_dir, model=trainer.model, optimizer=trainer.optimizer, d=d,
                           rank_state={"rng": trainer.rngs.state_dict(), "data": data},
                           strategy=trainer.cfg.parallel.strategy, trainable_only=lora)
        if d.is_main:
            torch.save({"step": step, "lr_scheduler": trainer.lr_scheduler.state_dict(), "data": data,
                        "world": d.world, "format": "dcp"}, os.path.join(state_dir, "trainer.pt"))
            meta = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__,
                    "format": "dcp", "world": d.world, "strategy": trainer.cfg.parallel.strategy}
            with open(os.path.join(state_dir, "meta.json"), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
    if d.is_main:
        prune_checkpoints(output_dir, step, total_limit)
    return final


def restore_sharded_checkpoint(trainer: Any, path: str) -> None:
    """Collective: load a sharded checkpoint into the trainer, resharded to its strategy and world.

    A rank the checkpoint did not have starts fresh RNG streams from (train.seed, step, rank) and the
    data position of rank 0 (the epoch and step are the same on every rank)."""
    d: Dist = trainer.dist
    state_dir = os.path.join(path, "state")
    check_kind(unwrap(trainer.model), Checkpoint(0, path))
    rank_state = load_sharded_state(state_dir, model=trainer.model, optimizer=trainer.optimizer, d=d,
                                    trainable_only=info_of(trainer.model) is not None)
    shared = torch.load(os.path.join(state_dir, "trainer.pt"), map_location="cpu", weights_only=True)
    trainer.step = int(shared["step"])
    trainer.lr_scheduler.load_state_dict(shared["lr_scheduler"])
    if rank_state is not None:
        trainer.rngs.load_state_dict(rank_state["rng"])
        data = rank_state["data"]
    else:
        seed = fresh_root_seed(trainer.cfg.train.seed, trainer.step)
        trainer.rngs = type(trainer.rngs)(seed, d.rank, trainer.device, with_global=trainer.rngs.with_global)
        data = shared["data"]
        log.warning("rank %d: not in the checkpoint's %d ranks; fresh random streams from (seed, step %d, rank)",
                    d.rank, saved_world(state_dir), trainer.step)
    trainer.source.load_state_dict(data)
    trainer._batches = None


def restore_full_checkpoint(trainer: Any, path: str) -> None:
    """Load a one-process checkpoint (safetensors weights, `state/trainer.pt` with the optimizer state
    keyed by parameter index) into a DDP or FSDP2 trainer of any world size: every rank reads the full
    state and keeps its part. Rank 0 continues the saved RNG streams; other ranks start fresh ones
    from (train.seed, step, rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    d: Dist = trainer.dist
    checkpoint = Checkpoint(0, path)
    check_kind(unwrap(trainer.model), checkpoint)
    state = load_state(checkpoint)
    # The optimizer was built from the plain model's trainable parameters, in this order.
    names = [n for n, p in unwrap(trainer.model).named_parameters() if p.requires_grad]
    osd = state["optimizer"]
    optim = {"state": {names[int(i)]: v for i, v in osd["state"].items()},
             "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]}
    lora = checkpoint.adapter_dir is not None
    if lora:  # the adapter alone: the frozen base is the one this trainer was built with
        weights = {module_key(k): v for k, v in read_adapter(checkpoint.adapter_dir).items()}
    else:
        weights = read_transformer_weights(os.path.join(path, "transformer"))
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=weights, optim_state_dict=optim,
                   options=StateDictOptions(full_state_dict=True, ignore_frozen_params=lora, strict=not lora))
    trainer.step = int(state["step"])
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if d.rank == 0:
        trainer.rngs.load_state_dict(state["rng"])
    else:
        trainer.rngs = type(trainer.rngs)(fresh_root_seed(trainer.cfg.train.seed, trainer.step), d.rank,
                                          trainer.device, with_global=trainer.rngs.with_global)
    trainer.source.load_state_dict(state["data"])
    trainer._batches = None
