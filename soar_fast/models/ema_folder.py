"""Where the EMA weights (`[ema]`) live on disk, and how sampling finds them.

  checkpoints/step-N/ema/ema.safetensors   the fp32 EMA of the trained parameters, keyed by their names in
                                           the transformer's state dict (gathered to rank 0 under FSDP2);
                                           metadata: `updates` (EMA updates so far: the warm-up resumes
                                           from it), `step`, `decay`, `every`, `warmup`
  <output_dir>/transformer_ema/            the final EMA as a diffusers transformer folder (`model.dtype`),
                                           beside `transformer/`
  <output_dir>/lora_ema/                   a LoRA run's: the final EMA of the adapter, in diffusers' LoRA
                                           format like `lora/` beside it (the checkpoints' EMA file then
                                           holds the adapter's tensors alone, `...lora_A.default.weight`)

`eval.use_ema` resolves `eval.checkpoint` with `ema_source`: a `checkpoints/step-N` folder (its
`transformer/` or `lora/` with `ema/ema.safetensors` laid over it), a `transformer_ema/` or `lora_ema/`
folder, or a run folder or its `transformer/` (`lora/`) with a `transformer_ema/` (`lora_ema/`) beside it.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from soar_fast.models.folder import ModelFolderError
from soar_fast.models.lora_io import FOLDER as LORA_FOLDER
from soar_fast.models.lora_io import is_adapter_folder

EMA_DIR = "ema"
EMA_FILE = "ema.safetensors"
EMA_EXPORT = "transformer_ema"
EMA_ADAPTER_EXPORT = "lora_ema"
"""A LoRA run's final EMA adapter, beside its `lora/` (the same diffusers LoRA format)."""


def ema_file(checkpoint_dir: str) -> str:
    return os.path.join(checkpoint_dir, EMA_DIR, EMA_FILE)


def write_ema_file(path: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})


def read_ema_meta(path: str) -> dict[str, str]:
    """The metadata of an EMA file (the header only: no tensor is read)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def read_ema_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def find_ema(path: str) -> tuple[str, str | None] | None:
    """(transformer or adapter folder to load, EMA file to lay over it or None) that `path` names, or
    None when it holds no EMA: see the module docstring."""
    norm = os.path.normpath(path)
    name, parent = os.path.basename(norm), os.path.dirname(norm)
    if os.path.isfile(ema_file(norm)):                                   # checkpoints/step-N
        return _trained_weights(norm), ema_file(norm)
    if name in (EMA_EXPORT, EMA_ADAPTER_EXPORT):
        return norm, None
    for export in (EMA_EXPORT, EMA_ADAPTER_EXPORT):
        if os.path.isdir(os.path.join(norm, export)):                   # a run folder
            return os.path.join(norm, export), None
    if name in ("transformer", LORA_FOLDER):
        export = EMA_EXPORT if name == "transformer" else EMA_ADAPTER_EXPORT
        if os.path.isdir(os.path.join(parent, export)):                 # <run>/transformer or <run>/lora
            return os.path.join(parent, export), None
        if os.path.isfile(ema_file(parent)):                            # checkpoints/step-N/transformer or lora
            return norm, ema_file(parent)
    return None


def _trained_weights(checkpoint_dir: str) -> str:
    """A checkpoint's weights: its LoRA adapter folder, else its transformer folder."""
    adapter = os.path.join(checkpoint_dir, LORA_FOLDER)
    return adapter if is_adapter_folder(adapter) else os.path.join(checkpoint_dir, "transformer")


def ema_source(path: str) -> tuple[str, str | None]:
    """`find_ema(path)` for `eval.use_ema`, or ModelFolderError naming the key."""
    found = find_ema(path)
    if found is None:
        raise ModelFolderError(f"eval.use_ema: eval.checkpoint={path} holds no EMA weights (neither "
                               f"{EMA_DIR}/{EMA_FILE} of a checkpoint nor a {EMA_EXPORT}/ or {EMA_ADAPTER_EXPORT}/ "
                               "folder): the run trained with ema.decay = 0, or set eval.use_ema = false")
    return found


def lay_over(model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, source: str) -> None:
    """Copy EMA `tensors` into `model`'s parameters of the same names (cast to their dtype)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ModelFolderError(f"{source}: EMA tensors {unknown[:3]} are not parameters of the transformer "
                               "it belongs to")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def load_ema_transformer(path: str, *, dtype: torch.dtype = torch.float32,
                         base_path: str | None = None) -> torch.nn.Module:
    """The transformer of `path` with its EMA weights (see `ema_source`). A LoRA run's EMA adapter is
    laid over the adapted model of its checkpoint (or is the exported `lora_ema/`), then merged into the
    base (`base_path`, else the base recorded with the adapter): a plain fp32 transformer."""
    from soar_fast.models.transformer import load_transformer

    folder, overlay = ema_source(path)
    if is_adapter_folder(folder):
        from soar_fast.models.lora_io import adapted_transformer, merged_transformer

        model = adapted_transformer(folder, path=base_path)
    else:
        model = load_transformer(folder, dtype=dtype)
    if overlay is not None:
        lay_over(model, read_ema_tensors(overlay), source=overlay)
    return merged_transformer(model) if is_adapter_folder(folder) else model
