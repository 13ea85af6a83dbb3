"""The diffusers-format transformer of a sharded or replicated model, written by rank 0.

Every rank calls `export_transformer` (gathering FSDP2 shards is a collective); only rank 0 holds
the full weights (on CPU) and writes `save_pretrained` output, which `from_pretrained`, `soar-fast
sample` and `eval.checkpoint` read like any diffusers transformer.
"""

from __future__ import annotations

import torch
from torch import nn

from .env import Dist
from .wrap import unwrap

__all__ = ["export_adapter", "export_transformer", "full_state_dict"]


def full_state_dict(model: nn.Module, d: Dist, *, trainable_only: bool = False) -> dict[str, torch.Tensor] | None:
    """Collective: the unsharded CPU state dict on rank 0 (keys of the unwrapped module); None elsewhere.
    `trainable_only`: only the parameters that train (a LoRA adapter: the frozen base is never gathered)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not d.has_group:
        # get_model_state_dict also strips the `_orig_mod.` of blocks compiled as OptimizedModules.
        sd = get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=trainable_only))
        return {k: v.detach().cpu() for k, v in sd.items()}
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                              ignore_frozen_params=trainable_only))
    return sd if d.is_main else None


def export_adapter(model: nn.Module, folder: str, d: Dist, *, dtype: torch.dtype | None = None,
                   base_relative: bool = False) -> None:
    """Collective: gather a LoRA adapter (its parameters only) to rank 0 and write the adapter folder
    there (`models.lora_io.save_adapter`; `base_relative` for exports of PiSSA/OLoRA adapters)."""
    from soar_fast.models.lora import adapter_state
    from soar_fast.models.lora_io import save_adapter

    sd = full_state_dict(model, d, trainable_only=True)
    if sd is None:
        return
    save_adapter(unwrap(model), folder, dtype=dtype, state=adapter_state(sd), base_relative_export=base_relative)


def export_transformer(model: nn.Module, folder: str, d: Dist, *, dtype: torch.dtype | None = None) -> None:
    """Collective: gather the weights to rank 0 and `save_pretrained(folder)` there (safetensors).

    The model is rebuilt on the meta device from its config and given the gathered tensors, so rank 0
    holds one CPU copy of the weights, not two. dtype: cast on export (default: as trained).
    """
    sd = full_state_dict(model, d)
    if sd is None:
        return
    base = _diffusers_class(unwrap(model))
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    with torch.device("meta"):
        shell = base.from_config(unwrap(model).config)
    shell.load_state_dict(sd, strict=True, assign=True)
    shell.save_pretrained(folder, safe_serialization=True)


def _diffusers_class(model: nn.Module) -> type:
    """The diffusers class under FSDP2's dynamic `FSDP<Class>` subclass."""
    from torch.distributed.fsdp import FSDPModule

    for cls in type(model).__mro__:
        if not issubclass(cls, FSDPModule) and hasattr(cls, "from_config"):
            return cls
    raise TypeError(f"{type(model).__name__} is not a diffusers model (no from_config)")
