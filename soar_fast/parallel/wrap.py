"""Data parallelism, applied last (torchtitan's order): float8 → activation checkpointing → compile
→ FSDP2/DDP. Every `apply_*` returns the module to call; `unwrap` gives back the diffusers model.

FSDP2 shards each transformer block, then the root (the embedders and the output head), so a block's
weights are gathered only while that block runs. Mixed precision is FSDP2's `MixedPrecisionPolicy`:
bf16 gathered weights with float32 gradient reduction, float32 sharded masters. The root does not
cast its inputs: the timestep τ must reach the sinusoidal embedding in float32 (bf16 rounds τ ≈ 873
to 872), and with bf16 weights the root runs under the trainer's bf16 autocast.

float8 with FSDP2 and compile follows torchao's recipe: `convert_to_float8_training` with
`float8_fsdp_options(...)` (float8 all-gather for the tensorwise recipe) before compile and sharding,
then `after_optimizer_step(model)` after every optimizer step (one all-reduce of the amax of all
float8 weights, instead of one per layer per forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..config import ParallelConfig
from .env import Dist

__all__ = ["after_optimizer_step", "apply_data_parallel", "apply_ddp", "apply_fsdp2", "float8_fsdp_options",
           "gradient_sync", "mixed_precision_dtypes", "transformer_blocks", "unwrap"]

_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP2 shards one by one (SD3: `transformer_blocks`; Flux: + `single_...`)."""
    model = unwrap(model)
    blocks = [b for name in _BLOCK_LISTS for b in getattr(model, name, ())]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has none of {_BLOCK_LISTS}: cannot shard it per block")
    return blocks


def mixed_precision_dtypes(cfg: ParallelConfig, *, autocast_bf16: bool,
                           device: torch.device) -> tuple[torch.dtype | None, torch.dtype]:
    """(param_dtype, reduce_dtype) for FSDP2; param_dtype None = keep the storage dtype."""
    reduce = torch.float32 if cfg.fsdp_reduce_dtype == "float32" else torch.bfloat16
    if cfg.fsdp_param_dtype == "float32":
        return torch.float32, reduce
    if cfg.fsdp_param_dtype == "bfloat16":
        return torch.bfloat16, reduce
    # auto: CPU keeps float32 (bf16 matmuls there are slow and gloo reduces in whatever dtype it gets).
    return (torch.bfloat16 if autocast_bf16 and device.type == "cuda" else None), reduce


def apply_fsdp2(model: nn.Module, *, param_dtype: torch.dtype | None = None,
                reduce_dtype: torch.dtype | None = torch.float32, reshard_after_forward: bool = True) -> nn.Module:
    """`fully_shard` each transformer block, then the root, over all ranks of the default group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                       cast_forward_inputs=False)
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=block_policy, reshard_after_forward=reshard_after_forward)
    # The root's weights are needed again right after the last block (norm_out, proj_out): keep them.
    fully_shard(model, mp_policy=root_policy, reshard_after_forward=False)
    return model


def apply_ddp(model: nn.Module, d: Dist) -> nn.Module:
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The only buffer (SD3's positional table, pos_embed_max_size² × width) is a function of the config: never
    # re-broadcast it before each forward. torch ≥ 2.13 names that switch `forward_sync_buffers`.
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(
        model,
        device_ids=[d.device.index] if d.device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **no_buffer_sync,
    )


def apply_data_parallel(model: nn.Module, cfg: ParallelConfig, d: Dist, *, autocast_bf16: bool) -> nn.Module:
    """The `parallel.strategy` step of the build order; `none` returns `model` unchanged."""
    if cfg.strategy == "none":
        return model
    if not d.has_group:
        raise ValueError(f"parallel.strategy = {cfg.strategy!r} needs a process group: call init_distributed first")
    if cfg.strategy == "ddp":
        return apply_ddp(model, d)
    param_dtype, reduce_dtype = mixed_precision_dtypes(cfg, autocast_bf16=autocast_bf16, device=d.device)
    return apply_fsdp2(model, param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                       reshard_after_forward=cfg.fsdp_reshard_after_forward)


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP's `.module` and a whole-model `torch.compile`'s `._orig_mod` (FSDP2 keeps
    the module itself, with sharded parameters)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient collective on accumulation micro-steps (`enabled=False`), for DDP and FSDP2."""
    if enabled:
        yield
        return
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


def float8_fsdp_options(strategy: str, recipe: str) -> dict:
    """Extra `Float8LinearConfig` fields for `strategy`: float8 all-gather under FSDP2 for the
    tensorwise recipe (torchao supports it only there)."""
    return {"enable_fsdp_float8_all_gather": strategy == "fsdp2" and recipe == "tensorwise"}


def after_optimizer_step(model: nn.Module) -> None:
    """Precompute the float8 weight scales for the next all-gather (torchao + FSDP2); a no-op otherwise.
    Call after every optimizer step; whether the model needs it is decided once and cached on it."""
    needed = getattr(model, "_soar_float8_all_gather", None)
    if needed is None:
        needed = _has_float8_all_gather(model)
        model._soar_float8_all_gather = needed
    if not needed:
        return
    from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

    precompute_float8_dynamic_scale_for_fsdp(model)


def _has_float8_all_gather(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return False
    for m in model.modules():
        if type(m).__name__ == "Float8Linear":
            return bool(getattr(getattr(m, "config", None), "enable_fsdp_float8_all_gather", False))
    return False
