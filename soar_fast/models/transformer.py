"""The SD3/SD3.5 MMDiT: a named preset with random weights, or a local diffusers folder.

Nothing here downloads: presets are built from configs and folders load with `local_files_only=True`.
Only `model` config is read (STYLE: each module takes its own section).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import torch

from soar_fast.config import ModelConfig
from soar_fast.config_io import ConfigError
from soar_fast.models.folder import ModelFolderError
from soar_fast.models.presets import PRESETS

# What `scheduler/scheduler_config.json` of SD3/SD3.5 says; used for presets and bare transformer folders.
DEFAULT_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_INDEX_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def preset_config(name: str, **dims: int | None) -> dict[str, Any]:
    """The diffusers config of preset `name`, with any of `dims` (e.g. in_channels,
    joint_attention_dim, pooled_projection_dim) replaced when not None. `out_channels`
    follows `in_channels`."""
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = dict(PRESETS[name])
    for key, value in dims.items():
        if value is not None:
            if key not in config:
                raise TypeError(f"preset_config: {key} is not an SD3Transformer2DModel config field")
            config[key] = int(value)
    if dims.get("in_channels") is not None:
        config["out_channels"] = int(dims["in_channels"])
    return config


def build_transformer(model_cfg: ModelConfig, *, seed: int = 0, **dims: int | None):
    """`model.path`'s transformer (fp32), else preset `model.preset` with random weights drawn from
    `seed` (the global RNG is left untouched). `dims` adapt a preset to the data's shapes
    (`in_channels`, `joint_attention_dim`, `pooled_projection_dim`); for a loaded model they are
    checked instead, so a mismatch is an error naming both sides."""
    if model_cfg.path:
        model = load_transformer(model_cfg.path)
        for key, value in dims.items():
            have = model.config.get(key)
            if value is not None and have is not None and int(have) != int(value):
                raise ModelFolderError(
                    f"model.path={model_cfg.path}: transformer {key}={have}, but the data gives {value}")
        return model
    from diffusers import SD3Transformer2DModel

    config = preset_config(model_cfg.preset, **dims)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SD3Transformer2DModel(**config)


def transformer_folder(path: str) -> str:
    """The folder holding the transformer's config.json: `path/transformer` for a pipeline folder,
    or `path` itself for a bare transformer folder (e.g. `checkpoints/step-N/transformer`)."""
    if not os.path.isdir(path):
        raise ModelFolderError(f"model folder not found: {path}")
    sub = os.path.join(path, "transformer")
    if os.path.isdir(sub):
        return sub
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    raise ModelFolderError(f"{path}: no transformer/ subfolder (a diffusers SD3 folder has "
                           "transformer/config.json and transformer/diffusion_pytorch_model.safetensors)")


def check_transformer_folder(folder: str) -> None:
    """Raise ModelFolderError naming the first missing file of a diffusers transformer folder."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ModelFolderError(f"{folder}: missing config.json")
    try:
        with open(config_path, encoding="utf-8") as f:
            cls = json.load(f).get("_class_name")
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{config_path}: unreadable ({e})") from None
    if cls not in (None, "SD3Transformer2DModel"):
        raise ModelFolderError(f"{config_path}: _class_name is {cls}, expected SD3Transformer2DModel")
    for index in _INDEX_FILES:
        index_path = os.path.join(folder, index)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as f:
                shards = sorted(set(json.load(f).get("weight_map", {}).values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise ModelFolderError(f"{folder}: missing weight shard(s) {', '.join(missing)} listed in {index}")
            return
    if not any(os.path.isfile(os.path.join(folder, w)) for w in _WEIGHT_FILES):
        raise ModelFolderError(f"{folder}: missing weights ({' or '.join(_WEIGHT_FILES)})")


def load_transformer(path: str, *, dtype: torch.dtype = torch.float32):
    """An `SD3Transformer2DModel` from a local pipeline or transformer folder; never downloads."""
    from diffusers import SD3Transformer2DModel

    folder = transformer_folder(path)
    check_transformer_folder(folder)
    try:
        return SD3Transformer2DModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelFolderError(f"{folder}: cannot load the transformer ({e})") from None


def scheduler_config(model_cfg: ModelConfig) -> dict[str, Any]:
    """The training scheduler config (for `SigmaGrid.from_scheduler_config`): the folder's
    `scheduler/scheduler_config.json`, else SD3's defaults (presets, bare transformer folders)."""
    if model_cfg.path:
        path = os.path.join(model_cfg.path, "scheduler", "scheduler_config.json")
        if os.path.isdir(os.path.join(model_cfg.path, "transformer")) and not os.path.isfile(path):
            raise ModelFolderError(f"model.path={model_cfg.path}: missing scheduler/scheduler_config.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    return dict(DEFAULT_SCHEDULER)


def velocity_fn(transformer) -> Callable[..., torch.Tensor]:
    """`f(latents [N,C,H,W], timesteps [N] float32, prompt_embeds [N,L,D], pooled [N,P]) -> velocity
    [N,C,H,W]`: the model callable of the objective. Timesteps are on the 0..N_train scale (τ = N·σ)."""
    def forward(latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        return transformer(hidden_states=latents, encoder_hidden_states=prompt_embeds,
                           pooled_projections=pooled, timestep=timesteps, return_dict=False)[0]
    return forward


def image_tokens(model_or_config: Any, latent_hw: tuple[int, int]) -> int:
    """Image tokens of one sample: (h / patch) · (w / patch). Takes the transformer or its config
    (diffusers' config or a plain mapping with `patch_size`)."""
    config = getattr(model_or_config, "config", model_or_config)
    patch = int(config["patch_size"])
    return (int(latent_hw[0]) // patch) * (int(latent_hw[1]) // patch)


def text_tokens(prompt_embeds: torch.Tensor) -> int:
    """Text tokens of one sample: the sequence length L of `prompt_embeds [B,L,D]`."""
    return int(prompt_embeds.shape[1])


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
