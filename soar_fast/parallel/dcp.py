"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), resumable on any number of ranks.

Inside a checkpoint folder (`checkpoints/step-N/`, written whole by `atomic_folder`):

  state/dcp/                 model + optimizer, one file per writing rank plus `.metadata`. Keys are
                             the unwrapped module's names (`get_state_dict` strips DDP's `module.`,
                             compile's `_orig_mod.`, FSDP2 shards are DTensors), so DDP, FSDP2 and a
                             plain module read each other's checkpoints at any world size.
  state/rank-00000.pt        per rank: RNG streams and data position (tensors, numbers, strings only;
                             loaded with `torch.load(weights_only=True)`).
  state/dist.json            world size and strategy at save time.
The trainer adds its own files beside these (the diffusers export, `state/trainer.pt` with the step
and LR scheduler, written by rank 0).

Different world size on resume: DCP reshards model and optimizer. Rank r < W_saved reads its own
rank file; rank r ≥ W_saved gets `None` and starts fresh streams from `seeds.fresh_root_seed(seed,
step)`; the rank files of ranks ≥ W_new are ignored. Multi-node: the output folder must be on a file
system every node sees (DCP writes one file per rank; rank 0 renames the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..atomic import publish_folder
from .env import Dist

__all__ = ["atomic_folder", "is_sharded_state", "load_sharded_state", "rank_file", "save_sharded_state",
           "saved_world"]

_DCP = "dcp"
_DIST_META = "dist.json"


def rank_file(state_dir: str, rank: int) -> str:
    return os.path.join(state_dir, f"rank-{rank:05d}.pt")


def is_sharded_state(state_dir: str) -> bool:
    """True when `state_dir` holds a DCP checkpoint (complete: DCP writes `.metadata` last)."""
    return os.path.isfile(os.path.join(state_dir, _DCP, ".metadata"))


def saved_world(state_dir: str) -> int:
    with open(os.path.join(state_dir, _DIST_META), encoding="utf-8") as f:
        return int(json.load(f)["world"])


def _options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # strict=False: a trainable-only state leaves out the frozen parameters and the buffers on purpose.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def _model_state(model: nn.Module, state: dict[str, Any], trainable_only: bool) -> dict[str, Any]:
    """`state` without the buffers when `trainable_only` (DCP keeps buffers with the frozen parameters left
    out; SD3's positional table is a function of the config, 0.9 GB in fp32 for SD3.5-M)."""
    if not trainable_only:
        return state
    buffers = {n.replace("_orig_mod.", "").removeprefix("module.") for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k not in buffers}


def save_sharded_state(state_dir: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None, d: Dist,
                       rank_state: dict[str, Any], strategy: str = "none", trainable_only: bool = False) -> None:
    """Collective: every rank writes its shards of model + optimizer and its own rank file.
    `trainable_only`: the model's trainable parameters alone (a LoRA adapter; the frozen base is the
    base model's, rebuilt on resume)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    os.makedirs(state_dir, exist_ok=True)
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
        state = {"model": _model_state(model, model_sd, trainable_only), "optim": optim_sd}
    else:
        state = {"model": _model_state(model, get_model_state_dict(model, options=_options(trainable_only)),
                                       trainable_only)}
    with _quiet_no_dist(d):
        dcp.save(state, checkpoint_id=os.path.join(state_dir, _DCP), no_dist=not d.has_group)
    torch.save(rank_state, rank_file(state_dir, d.rank))
    if d.is_main:
        with open(os.path.join(state_dir, _DIST_META), "w", encoding="utf-8") as f:
            json.dump({"world": d.world, "strategy": strategy, "format": "dcp", "torch": torch.__version__}, f)


def load_sharded_state(state_dir: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                       d: Dist, trainable_only: bool = False) -> dict[str, Any] | None:
    """Collective: load model (+ optimizer) in place, resharded to this run's layout; return this
    rank's saved rank state, or None when the checkpoint had fewer ranks than this run.
    `trainable_only`: as saved by `save_sharded_state(..., trainable_only=True)`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if not is_sharded_state(state_dir):
        raise FileNotFoundError(f"{state_dir}: no DCP checkpoint ({_DCP}/.metadata missing)")
    ckpt = os.path.join(state_dir, _DCP)
    if optimizer is not None:
        # get_state_dict creates the optimizer state (a zero-lr step) so DCP has tensors to load into.
        model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(trainable_only))
        state = {"model": _model_state(model, model_sd, trainable_only), "optim": optim_sd}
        with _quiet_no_dist(d):
            dcp.load(state, checkpoint_id=ckpt, no_dist=not d.has_group)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=_options(trainable_only))
    else:
        state = {"model": _model_state(model, get_model_state_dict(model, options=_options(trainable_only)),
                                       trainable_only)}
        with _quiet_no_dist(d):
            dcp.load(state, checkpoint_id=ckpt, no_dist=not d.has_group)
        set_model_state_dict(model, state["model"], options=_options(trainable_only))
    path = rank_file(state_dir, d.rank)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def atomic_folder(final: str, d: Dist) -> Iterator[str]:
    """Yield one temporary folder, the same on every rank; when every rank has left the block,
    rank 0 moves it to `final` (replacing an older `final`), and every rank waits for that.

    The name `.tmp-<name>-<hex>` beside `final` is what the trainer's `remove_partial_saves` deletes;
    an exception in the block leaves it there for that cleanup and never touches `final`.
    """
    parent, name = os.path.split(os.path.normpath(final))
    tag = d.broadcast_object(uuid.uuid4().hex if d.is_main else None)
    tmp = os.path.join(parent, f".tmp-{name}-{tag}")
    if d.is_main:
        os.makedirs(tmp)
    d.barrier()
    yield tmp
    d.barrier()
    if d.is_main:
        publish_folder(tmp, final, tag)
    d.barrier()


@contextlib.contextmanager
def _quiet_no_dist(d: Dist) -> Iterator[None]:
    """DCP warns on every one-process save/load that it 'assumes' one process; here that is the intent."""
    with warnings.catch_warnings():
        if not d.has_group:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield
