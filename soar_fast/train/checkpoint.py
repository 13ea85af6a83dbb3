"""Checkpoints that really resume, written so a crash never destroys the previous one.

Layout of `<output_dir>/checkpoints/step-<N>/`:
  transformer/      diffusers `save_pretrained` (safetensors, fp32 master weights); with LoRA instead
  lora/             the adapter alone, fp32, in diffusers' LoRA format (`models/lora_io.py`)
  state/trainer.pt  step, optimizer, LR scheduler, RNG streams, data position (tensors, numbers,
                    strings only: loaded with `torch.load(weights_only=True)`)
  state/meta.json   the same step and the versions, for humans
  ema/ema.safetensors  the fp32 EMA and its update count, with `ema.decay` > 0 (models/ema_folder.py)
A checkpoint is written under `checkpoints/.tmp-step-<N>-<pid>/` and renamed into place in one
`os.replace`, so `step-<N>` exists only when complete; names that are not `step-<N>` are never
taken for a checkpoint, and leftovers of a killed save are removed by the next save.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch

from soar_fast.atomic import save_folder_atomically
from soar_fast.models.lora import info_of
from soar_fast.models.lora_io import FOLDER as LORA_FOLDER
from soar_fast.models.lora_io import WEIGHTS as LORA_WEIGHTS
from soar_fast.models.lora_io import find_adapter_folder, load_adapter_weights, save_adapter

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
_STATE = "state/trainer.pt"
# One of these holds the weights: the full transformer, or a LoRA adapter.
_WEIGHTS = ("transformer/config.json", f"{LORA_FOLDER}/{LORA_WEIGHTS}")
# Test hook, read only here: seconds to pause between writing the weights and the state of a
# checkpoint, so tests can `kill -9` a process in the middle of a save.
_SLOW_SAVE_ENV = "SOAR_FAST_TEST_SLOW_SAVE"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str

    @property
    def transformer_dir(self) -> str:
        return os.path.join(self.path, "transformer")

    @property
    def adapter_dir(self) -> str | None:
        """The checkpoint's `lora/` folder, None for a full fine-tune's checkpoint."""
        return find_adapter_folder(self.path) if os.path.isdir(os.path.join(self.path, LORA_FOLDER)) else None


def checkpoints_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def _missing(path: str) -> list[str]:
    missing = [] if os.path.isfile(os.path.join(path, _STATE)) else [_STATE]
    if not any(os.path.isfile(os.path.join(path, w)) for w in _WEIGHTS):
        missing.append(" or ".join(_WEIGHTS))
    return missing


def is_complete(path: str) -> bool:
    return not _missing(path)


def list_checkpoints(output_dir: str) -> list[Checkpoint]:
    """Complete `step-<N>` checkpoints of a run, oldest first."""
    root = checkpoints_dir(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if m and is_complete(path):
            found.append(Checkpoint(int(m.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(output_dir: str) -> Checkpoint | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str) -> Checkpoint:
    """A `step-<N>` folder, or a run's output_dir (its latest checkpoint), given to `--resume PATH`."""
    from soar_fast.models.transformer import ModelFolderError

    if not os.path.isdir(path):
        raise ModelFolderError(f"--resume: no such folder: {path}")
    m = _STEP_DIR.match(os.path.basename(os.path.normpath(path)))
    if m:
        if not is_complete(path):
            missing = _missing(path)
            raise ModelFolderError(f"--resume {path}: incomplete checkpoint (missing {', '.join(missing)})")
        return Checkpoint(int(m.group(1)), path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise ModelFolderError(f"--resume {path}: not a checkpoints/step-N folder and holds no checkpoint")
    return latest


def remove_partial_saves(output_dir: str) -> None:
    """Delete `.tmp-*` folders left by a save that was killed (they are never read). An `.old-*`
    folder whose replacement never arrived (killed between the two renames) is put back."""
    root = checkpoints_dir(output_dir)
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(".tmp-"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".old-"):
            original = os.path.join(root, name[len(".old-"):].rsplit("-", 1)[0])
            if os.path.exists(original):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, original)


def save_checkpoint(output_dir: str, step: int, *, transformer: torch.nn.Module, state: dict[str, Any],
                    total_limit: int | None = None,
                    ema: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Checkpoint:
    """Write `checkpoints/step-<step>` atomically, then prune to `total_limit` (oldest first).
    `ema`: (tensors, metadata) of the EMA file, written inside the same atomic folder."""
    remove_partial_saves(output_dir)
    final = os.path.join(checkpoints_dir(output_dir), f"step-{step}")

    def write(tmp: str) -> None:
        save_weights(transformer, tmp)
        pause = float(os.environ.get(_SLOW_SAVE_ENV, "0") or 0)
        if pause > 0:
            time.sleep(pause)
        os.makedirs(os.path.join(tmp, "state"))
        torch.save(state, os.path.join(tmp, "state", "trainer.pt"))
        meta = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
        with open(os.path.join(tmp, "state", "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        if ema is not None:
            from soar_fast.models.ema_folder import ema_file, write_ema_file

            write_ema_file(ema_file(tmp), *ema)

    save_folder_atomically(final, write)
    prune_checkpoints(output_dir, step, total_limit)
    return Checkpoint(step, final)


def prune_checkpoints(output_dir: str, step: int, total_limit: int | None) -> None:
    """Keep `step-<step>` (just written) and the newest `total_limit − 1` checkpoints below it.

    Checkpoints above `step` belong to a continuation abandoned by resuming from an older one: they
    are never pruned by rank (that would delete the run's own newest saves), only reported."""
    if total_limit is None or total_limit <= 0:
        return
    older = [c for c in list_checkpoints(output_dir) if c.step < step]
    for old in older[:max(len(older) - (total_limit - 1), 0)]:
        shutil.rmtree(old.path, ignore_errors=True)
    newer = [c.step for c in list_checkpoints(output_dir) if c.step > step]
    if newer:
        log.warning("checkpoints/ also holds steps %s from an abandoned continuation; `--resume` without a "
                    "PATH picks the highest step", newer)


def save_weights(transformer: torch.nn.Module, checkpoint_dir: str) -> None:
    """What a checkpoint keeps of the model: `transformer/` (full fine-tune) or `lora/` (the adapter)."""
    model = getattr(transformer, "_orig_mod", transformer)
    if info_of(model) is not None:
        save_adapter(model, os.path.join(checkpoint_dir, LORA_FOLDER))
    else:
        save_transformer(model, os.path.join(checkpoint_dir, "transformer"))


def save_transformer(transformer: torch.nn.Module, folder: str, *, dtype: torch.dtype | None = None) -> None:
    """diffusers `save_pretrained` as safetensors (of the uncompiled module), optionally cast."""
    model = getattr(transformer, "_orig_mod", transformer)
    if dtype is not None and dtype != next(model.parameters()).dtype:
        import copy

        model = copy.deepcopy(model).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)


def load_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The trainer state of a checkpoint, loaded without unpickling code (`weights_only=True`)."""
    return torch.load(os.path.join(checkpoint.path, "state", "trainer.pt"), map_location="cpu",
                      weights_only=True)


def read_transformer_weights(folder: str) -> dict[str, torch.Tensor]:
    """The full state dict of a diffusers transformer folder (one or several safetensors shards)."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    else:
        shards = ["diffusion_pytorch_model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    return state


def check_kind(model: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """A LoRA checkpoint resumes only a LoRA run and a full one only a full run (ModelFolderError)."""
    from soar_fast.models.transformer import ModelFolderError

    adapted, has_adapter = info_of(model) is not None, checkpoint.adapter_dir is not None
    if adapted and not has_adapter:
        raise ModelFolderError(f"{checkpoint.path}: a full fine-tune's checkpoint (transformer/), but lora.rank > 0; "
                               "resume it with lora.rank = 0")
    if has_adapter and not adapted:
        raise ModelFolderError(f"{checkpoint.path}: a LoRA checkpoint (lora/), but lora.rank = 0; resume it with "
                               "the run's [lora] settings")


def load_weights(transformer: torch.nn.Module, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's safetensors weights into `transformer` in place (same architecture): the
    whole transformer, or the adapter of a LoRA run."""
    model = getattr(transformer, "_orig_mod", transformer)
    check_kind(model, checkpoint)
    if checkpoint.adapter_dir is not None:
        load_adapter_weights(model, checkpoint.adapter_dir)
        return
    state = read_transformer_weights(checkpoint.transformer_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{checkpoint.transformer_dir}: weights do not match the model (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
