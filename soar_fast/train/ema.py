"""`[ema]`: an fp32 exponential moving average of the trained parameters (docs/ema.md).

The averaged parameters are the ones handed to the optimizer: the whole transformer in a full
fine-tune, only the adapter when just the adapter is trainable. After every `ema.every` optimizer
steps, `ema ← lerp(ema, weights, 1 − decay)` (diffusers' `EMAModel` update) for every tensor at once:
one `torch._foreach_lerp_`, no Python loop over the parameters.

Under FSDP2 each rank averages the local shards of its DTensor parameters (`DTensor.to_local()`), so the
EMA is sharded exactly like the parameters and costs each rank 4 bytes per parameter it holds. With
`ema.device = "cpu"` the EMA lives in host memory: each update first copies the weights into an fp32 host
staging copy with one `torch._foreach_copy_` (pinned when the weights are on CUDA; reading them there is
a host sync), then lerps on the host.

`swapped_in()` puts the EMA into the live parameters for a block and restores them bit for bit after,
so export, previews and sampling run their ordinary code on the EMA weights.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from soar_fast.config import EmaConfig
from soar_fast.config_io import ConfigError
from soar_fast.models.folder import ModelFolderError
from soar_fast.parallel import Dist, after_optimizer_step, unwrap

log = logging.getLogger(__name__)


def ema_decay(cfg: EmaConfig, update: int) -> float:
    """The decay of the `update`-th EMA update (1-based): diffusers' `EMAModel.get_decay` with
    `update_after_step = 0` for the warm-ups, `ema.decay` throughout without one."""
    if cfg.warmup == "none":
        return cfg.decay
    n = update - 1
    if n <= 0:
        return 0.0  # the first update copies the weights
    if cfg.warmup == "power":
        value = 1.0 - (1.0 + n / cfg.inv_gamma) ** -cfg.power
    else:
        value = (1.0 + n) / (10.0 + n)
    return max(min(value, cfg.decay), cfg.min_decay)


def state_dict_name(name: str) -> str:
    """A parameter's name as the transformer's state dict has it (without compile's `_orig_mod.`)."""
    return name.replace("_orig_mod.", "")


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class Ema:
    """The EMA of `params` (named `names`, parameters of `model`), fp32, on `cfg.device`.

    `updates` counts the EMA updates so far (the warm-up's n): it and the tensors are the state.
    """

    def __init__(self, cfg: EmaConfig, model: torch.nn.Module, params: Sequence[torch.Tensor],
                 names: Sequence[str]) -> None:
        if not params:
            raise ConfigError("ema.decay > 0 but the optimizer has no trainable parameters to average")
        self.cfg = cfg
        self.model = model
        self.params = list(params)
        self.names = list(names)
        self.updates = 0
        self._sharded = any(_is_dtensor(p) for p in self.params)
        host = torch.device("cpu") if cfg.device == "cpu" else None
        with torch.no_grad():
            live = self._local()
            self.shadow = [t.detach().to(device=host or t.device, dtype=torch.float32, copy=True) for t in live]
        # `cpu` always stages (also when the weights are on the host), so the tested path is the one that runs.
        self._staging: list[torch.Tensor] | None = None
        if cfg.device == "cpu" or any(t.dtype != torch.float32 for t in live):
            pin = any(t.is_cuda for t in live) and host is not None
            self._staging = [torch.empty(s.shape, dtype=torch.float32, device=s.device, pin_memory=pin)
                             for s in self.shadow]

    def _local(self) -> list[torch.Tensor]:
        """The tensors this rank holds: the parameters, or their local shards under FSDP2. Taken afresh
        each time: FSDP2 re-points a shard's storage after a `load_state_dict` or `.to()` (it re-pads
        uneven shards; resume loads that way). 500 views cost 0.5 ms on CPU."""
        if not self._sharded:
            return self.params
        return [p.to_local() if _is_dtensor(p) else p for p in self.params]

    # ------------------------------------------------------------------------------------- update

    def after_step(self, step: int) -> bool:
        """Called after optimizer step `step` (1-based); updates every `ema.every` steps. True if it did."""
        if step % self.cfg.every:
            return False
        self.updates += 1
        weight = 1.0 - ema_decay(self.cfg, self.updates)
        with torch.no_grad():
            live = self._local()
            if self._staging is not None:
                torch._foreach_copy_(self._staging, live)  # device → host (a sync when the weights are on CUDA)
                live = self._staging
            torch._foreach_lerp_(self.shadow, live, weight)
        return True

    # ------------------------------------------------------------------------------------- use

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA in the live parameters for the block; the weights come back bit for bit after.
        Under FSDP2 every rank enters it (the forwards inside are collectives)."""
        with torch.no_grad():
            live = self._local()
            # The backup sits beside the EMA (host memory with ema.device = "cpu"), in the weights' dtype.
            backup = [torch.empty(t.shape, dtype=t.dtype, device=s.device) for t, s in zip(live, self.shadow)]
            torch._foreach_copy_(backup, live)
            torch._foreach_copy_(live, self.shadow)
        self._reshard()
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._local(), backup)
            self._reshard()

    def reset(self) -> None:
        """Start over from the current weights (resuming a checkpoint that has no EMA)."""
        with torch.no_grad():
            torch._foreach_copy_(self.shadow, self._local())
        self.updates = 0

    def _reshard(self) -> None:
        """Free FSDP2's gathered weights: a module kept unsharded after a forward (the root's
        `reshard_after_forward=False`) would skip its next all-gather and compute with stale weights.
        float8 all-gathers also need the scales of the weights now in place."""
        if not self._sharded:
            return
        from torch.distributed.fsdp import FSDPModule

        for m in self.model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()
        after_optimizer_step(self.model)

    # ------------------------------------------------------------------------------------- state

    def meta(self, step: int) -> dict[str, Any]:
        """What the EMA file's metadata records (`updates` is what resume needs)."""
        c = self.cfg
        return {"updates": self.updates, "step": step, "decay": c.decay, "every": c.every, "warmup": c.warmup}

    def full_tensors(self, d: Dist) -> dict[str, torch.Tensor] | None:
        """Collective under FSDP2: the whole EMA on the host of rank 0, keyed by state-dict name; None
        on other ranks. One parameter at a time (checkpoints only, never the hot path)."""
        out: dict[str, torch.Tensor] = {}
        for name, p, s in zip(self.names, self.params, self.shadow):
            if _is_dtensor(p):
                from torch.distributed.tensor import DTensor

                local = s.to(p.to_local().device)
                full = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                          stride=p.stride()).full_tensor()
            else:
                full = s
            if d.is_main:
                out[name] = full.detach().to("cpu", copy=True).contiguous()
        return out if d.is_main else None

    def load_full_tensors(self, tensors: dict[str, torch.Tensor], updates: int, *, source: str) -> None:
        """Restore from whole tensors (every rank reads them; each keeps its shard), exactly."""
        missing = [n for n in self.names if n not in tensors]
        unexpected = sorted(set(tensors) - set(self.names))
        if missing or unexpected:
            raise ModelFolderError(f"{source}: the EMA does not match the trained parameters (missing "
                                   f"{missing[:3]}, unexpected {unexpected[:3]})")
        with torch.no_grad():
            for name, p, s in zip(self.names, self.params, self.shadow):
                full = tensors[name]
                if tuple(full.shape) != tuple(p.shape):
                    raise ModelFolderError(f"{source}: EMA tensor {name} has shape {tuple(full.shape)}, the "
                                           f"parameter {tuple(p.shape)}")
                if _is_dtensor(p):
                    from torch.distributed.tensor import distribute_tensor

                    # Every rank holds the whole tensor: take this rank's shard without communication.
                    full = distribute_tensor(full.to(p.to_local().device), p.device_mesh, p.placements,
                                             src_data_rank=None).to_local()
                s.copy_(full)
        self.updates = int(updates)


def build_ema(cfg: EmaConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Ema | None:
    """The EMA of the optimizer's parameters (None when `ema.decay` = 0), named as in `model`'s state dict."""
    if cfg.decay == 0:
        return None
    names = {id(p): state_dict_name(n) for n, p in unwrap(model).named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    unnamed = [i for i, p in enumerate(params) if id(p) not in names]
    if unnamed:
        raise ValueError(f"ema: optimizer parameters {unnamed[:3]} are not parameters of the model")
    return Ema(cfg, model, params, [names[id(p)] for p in params])


def restore_ema(ema: Ema | None, checkpoint_dir: str, *, step: int) -> None:
    """Resume the EMA from `checkpoint_dir/ema/ema.safetensors` (whatever strategy and world size wrote
    it). A checkpoint without one (trained with `ema.decay = 0`) starts the EMA from the resumed weights."""
    from soar_fast.models.ema_folder import ema_file, read_ema_meta, read_ema_tensors

    path = ema_file(checkpoint_dir)
    if ema is None:
        if os.path.isfile(path):
            log.info("%s: not continued (ema.decay = 0)", path)
        return
    if not os.path.isfile(path):
        log.warning("%s holds no EMA (trained with ema.decay = 0): the EMA starts from the resumed weights of "
                    "step %d", checkpoint_dir, step)
        ema.reset()
        return
    meta = read_ema_meta(path)
    ema.load_full_tensors(read_ema_tensors(path), int(meta["updates"]), source=path)
