"""LoRA adapter folders: what LoRA checkpoints and exports hold, and how an adapted model is rebuilt.

An adapter folder (`checkpoints/step-N/lora/`, the final `<output_dir>/lora/`):

  pytorch_lora_weights.safetensors  diffusers' LoRA format: keys `transformer.<module>.lora_A.weight` /
                                    `.lora_B.weight` only, the peft LoraConfig (rank, alpha, targets) in
                                    the safetensors metadata, so `StableDiffusion3Pipeline.load_lora_weights`
                                    reads the folder as it is
  soar_lora.json                    `LoraInfo` (settings + the base to rebuild) and `relative_to`

Checkpoints keep the adapter as trained, in fp32 (exact resume). For PiSSA/OLoRA that adapter belongs
to the residual base the init left behind (`relative_to = "residual"`): `save_adapter(...,
base_relative=True)`, which the final export and `soar-fast export` use, rewrites it as a delta on the
original base (rank 2r: [A; A0] and [B, −B0], alpha 2α, so B·A − B0·A0 at the same scale).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from soar_fast.config import ModelConfig
from soar_fast.models.folder import ModelFolderError
from soar_fast.models.lora import (
    LoraInfo,
    adapter_state,
    apply_lora,
    info_of,
    module_key,
)

WEIGHTS = "pytorch_lora_weights.safetensors"
INFO = "soar_lora.json"
FOLDER = "lora"
"""The adapter folder's name inside a checkpoint and a run's output_dir."""
_PREFIX = "transformer."


def is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WEIGHTS)) and os.path.isfile(os.path.join(path, INFO))


def find_adapter_folder(path: str) -> str | None:
    """`path` itself, or its `lora/` (a checkpoint or a run folder), when that is an adapter folder."""
    for candidate in (path, os.path.join(path, FOLDER)):
        if is_adapter_folder(candidate):
            return candidate
    return None


def base_relative(state: dict[str, torch.Tensor], initial: dict[str, torch.Tensor],
                  info: LoraInfo) -> tuple[dict[str, torch.Tensor], int, float]:
    """A PiSSA/OLoRA adapter on the residual base as an adapter on the original base: (state, rank, alpha).
    residual + s·B·A = W + s·(B·A − B0·A0), written as one rank-2r adapter at the same scale s."""
    out = {}
    for key, value in state.items():
        start = initial[key].to(value.device, value.dtype)
        out[key] = torch.cat([value, start], 0) if ".lora_A." in key else torch.cat([value, -start], 1)
    return out, 2 * info.rank, 2 * info.alpha


def write_adapter(folder: str, state: dict[str, torch.Tensor], info: LoraInfo, *, rank: int | None = None,
                  alpha: float | None = None, relative_to: str = "base") -> None:
    """`state` (saved keys) in diffusers' LoRA format + soar_lora.json into `folder` (created)."""
    from diffusers import StableDiffusion3Pipeline

    # The loader builds its LoraConfig from this: init True (never PiSSA on load: that would rewrite
    # the base), no dropout (inference).
    metadata = {"r": int(rank or info.rank), "lora_alpha": float(alpha or info.alpha),
                "target_modules": list(info.target_modules), "lora_dropout": 0.0, "init_lora_weights": True}
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=tensors,
                                               transformer_lora_adapter_metadata=metadata)
    with open(os.path.join(folder, INFO), "w", encoding="utf-8") as f:
        json.dump({**info.as_dict(), "relative_to": relative_to, "saved_rank": metadata["r"],
                   "saved_alpha": metadata["lora_alpha"]}, f, indent=1)


def save_adapter(model: torch.nn.Module, folder: str, *, dtype: torch.dtype | None = None,
                 state: dict[str, torch.Tensor] | None = None, base_relative_export: bool = False) -> None:
    """Write the adapter of `model` (an unwrapped adapted transformer, e.g. EMA weights swapped in) to
    `folder`. `state`: its adapter tensors when already gathered (FSDP2); `dtype`: cast on the way out;
    `base_relative_export`: PiSSA/OLoRA adapters as deltas on the original base (exports)."""
    info = info_of(model)
    if info is None:
        raise ValueError("save_adapter: the model has no LoRA adapter (lora.rank = 0)")
    state = adapter_state(model) if state is None else state
    rank, alpha, relative = info.rank, info.alpha, "residual" if info.moves_base else "base"
    if base_relative_export and info.moves_base:
        state, rank, alpha = base_relative({k: v.float() for k, v in state.items()}, model.soar_lora_initial, info)
        relative = "base"
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    write_adapter(folder, state, info, rank=rank, alpha=alpha, relative_to=relative)


def read_info(folder: str) -> tuple[LoraInfo, dict[str, Any]]:
    """(LoraInfo, the whole soar_lora.json) of an adapter folder."""
    path = os.path.join(folder, INFO)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path}: unreadable ({e})") from None
    return LoraInfo.from_dict(data), data


def read_adapter(folder: str) -> dict[str, torch.Tensor]:
    """The adapter tensors of `folder` in saved-key form (the `transformer.` prefix dropped)."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(folder, WEIGHTS))
    return {k.removeprefix(_PREFIX): v for k, v in state.items() if k.startswith(_PREFIX)}


def load_adapter_weights(model: torch.nn.Module, folder: str) -> None:
    """Copy the adapter of `folder` into the adapted `model` in place (as saved: a checkpoint's adapter,
    or an export without a base conversion); every adapter tensor of the model must be there."""
    info = info_of(model)
    saved, data = read_info(folder)
    if info is None:
        raise ModelFolderError(f"{folder}: holds a LoRA adapter (rank {saved.rank}) but lora.rank = 0")
    if (data.get("saved_rank", saved.rank), list(saved.target_modules)) != (info.rank, list(info.target_modules)):
        raise ModelFolderError(f"{folder}: adapter of rank {data.get('saved_rank', saved.rank)} on "
                               f"{saved.target_modules}, the model's is rank {info.rank} on {info.target_modules}")
    state = {module_key(k): v for k, v in read_adapter(folder).items()}
    model_keys = {k for k in model.state_dict() if ".lora_A." in k or ".lora_B." in k}
    missing, unexpected = sorted(model_keys - set(state)), sorted(set(state) - model_keys)
    if missing or unexpected:
        raise ModelFolderError(f"{folder}: adapter does not match the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    model.load_state_dict(state, strict=False)


def rebuild_base(info: LoraInfo, *, path: str | None = None) -> torch.nn.Module:
    """The base transformer the adapter was trained on (fp32): `path` if given, else the recorded
    `model.path`, else the recorded preset with its seed and the data's widths."""
    from soar_fast.models.transformer import build_transformer

    base = info.base
    model_cfg = ModelConfig(preset=base.get("preset", "tiny"), path=path or base.get("path"))
    dims = {} if model_cfg.path else dict(base.get("dims") or {})
    return build_transformer(model_cfg, seed=int(base.get("seed", 0)), **dims)


def adapted_transformer(folder: str, *, path: str | None = None) -> torch.nn.Module:
    """Base + the adapter of `folder` (fp32), rebuilt as training had it (a PiSSA/OLoRA init redone)."""
    info, data = read_info(folder)
    if data.get("relative_to", "base") == "base" and data.get("saved_rank", info.rank) != info.rank:
        # An export converted to the original base: a plain LoRA of the saved rank on the untouched base.
        info = LoraInfo(**{**info.as_dict(), "rank": int(data["saved_rank"]), "alpha": float(data["saved_alpha"]),
                           "init": "true"})
    model = apply_lora(rebuild_base(info, path=path), info)
    load_adapter_weights(model, folder)
    return model


def merged_transformer(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its adapter folded into the base weights and the LoRA layers removed, in place:
    a plain `SD3Transformer2DModel` (the base is cast to fp32 first, so W + s·B·A is rounded once)."""
    model.to(torch.float32)
    model.fuse_lora(lora_scale=1.0)
    model.unload_lora()
    for attr in ("soar_lora", "soar_lora_initial"):
        if attr in model.__dict__:
            del model.__dict__[attr]
    return model


