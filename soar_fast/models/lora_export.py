"""`soar-fast export [--merge] [--ema] SOURCE OUT`: a LoRA run's adapter as a file other tools load.

SOURCE is a run folder (its final `lora/`, else its latest checkpoint), a `checkpoints/step-N` folder
or an adapter folder itself; with `--ema`, the EMA of the adapter (`ema.decay` > 0) instead: the run's
`lora_ema/`, or a checkpoint's `ema/` laid over its adapter. Without `--merge`, OUT is the adapter in
diffusers' LoRA format (`StableDiffusion3Pipeline.load_lora_weights(OUT)`), relative to the original
base (PiSSA/OLoRA converted); with `--merge`, OUT is a full transformer folder
(`SD3Transformer2DModel.from_pretrained(OUT)`), base + adapter folded into one set of weights. The base is the one recorded with the adapter, or
`--model.path=DIR` when that folder has moved. `--dtype` casts what is written (default float32).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from soar_fast.atomic import save_folder_atomically
from soar_fast.config import Config
from soar_fast.errors import OutputExistsError
from soar_fast.models.folder import ModelFolderError
from soar_fast.models.lora_io import (
    adapted_transformer,
    find_adapter_folder,
    is_adapter_folder,
    merged_transformer,
    save_adapter,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def source_adapter(source: str, *, ema: bool = False) -> tuple[str, str | None]:
    """(adapter folder, EMA file to lay over it or None) that SOURCE names (see the module docstring),
    or ModelFolderError saying why not."""
    from soar_fast.train.checkpoint import latest_checkpoint

    if not os.path.isdir(source):
        raise ModelFolderError(f"export: no such folder: {source}")
    if ema:
        return _ema_adapter(source)
    folder = find_adapter_folder(source)
    if folder is None:
        latest = latest_checkpoint(source)
        folder = latest.adapter_dir if latest is not None else None
    if folder is None:
        raise ModelFolderError(f"export: {source} holds no LoRA adapter (lora/ with pytorch_lora_weights.safetensors "
                               "and soar_lora.json); a full fine-tune's transformer/ is already a diffusers folder")
    return folder, None


def _ema_adapter(source: str) -> tuple[str, str | None]:
    from soar_fast.models.ema_folder import find_ema
    from soar_fast.train.checkpoint import latest_checkpoint

    found = find_ema(source)
    if found is None and (latest := latest_checkpoint(source)) is not None:
        found = find_ema(latest.path)
    if found is None:
        raise ModelFolderError(f"export --ema: {source} holds no EMA (trained with ema.decay = 0?): neither "
                               "lora_ema/ nor a checkpoint's ema/ema.safetensors")
    if not is_adapter_folder(found[0]):
        raise ModelFolderError(f"export --ema: the EMA of {source} is a full transformer ({found[0]}), already a "
                               "diffusers folder")
    return found


def export_lora(source: str, out: str, *, merge: bool, dtype: torch.dtype = torch.float32,
                base_path: str | None = None, ema: bool = False) -> str:
    """Write OUT from SOURCE (module docstring); returns the adapter folder that was read."""
    if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        raise OutputExistsError(f"export: {out} already exists (choose a new folder)")
    folder, overlay = source_adapter(source, ema=ema)
    model = adapted_transformer(folder, path=base_path)
    if overlay is not None:
        from soar_fast.models.ema_folder import lay_over, read_ema_tensors

        lay_over(model, read_ema_tensors(overlay), source=overlay)
    if merge:
        merged = merged_transformer(model)
        if dtype != torch.float32:
            merged = merged.to(dtype)
        save_folder_atomically(out, lambda tmp: merged.save_pretrained(tmp, safe_serialization=True))
    else:
        save_folder_atomically(out, lambda tmp: save_adapter(model, tmp, dtype=dtype, base_relative_export=True))
    return folder


def main_export(cfg: Config, args: Any) -> int:
    ema = bool(args.ema)
    folder = export_lora(args.source, args.out, merge=args.merge, dtype=DTYPES[args.dtype], base_path=cfg.model.path,
                         ema=ema)
    what = "merged transformer" if args.merge else "LoRA adapter (diffusers format)"
    print(f"wrote the {what} of {folder}{' with its EMA' if ema else ''} to {args.out}")
    return 0
