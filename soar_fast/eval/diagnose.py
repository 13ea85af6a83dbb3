"""Exposure-bias diagnostics of trained transformers: the data, noise and models around
`eval/exposure.py`, callable without the command line (`diagnose_checkpoints`).

Samples: the first N samples of the training data (`data.*`, read through `data/build.py` as training
reads it: epoch 0's order under `train.seed`, taken one sample at a time, no flips), or of `data_jsonl`
(a reference-format JSONL, images beside it, encoded with the run's encoders). The demo reuses the
run's own demo cache (`<run.output_dir>/demo-data/cache`) when it exists. Sample i gets its own noise:
a CPU generator seeded with `seed + i` draws z1, then the ε of `z0 = mean + std·ε` (the training draw
of the VAE posterior), so a number depends on the samples and the seed, never on the batch size. The
training data measures the model where it was fitted; a held-out set is measured with `data_jsonl`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from soar_fast.config import Config
from soar_fast.eval.exposure import GuidedVelocity, exposure_bias, merge, rollout_paths
from soar_fast.eval.pipeline import resolve_dtype
from soar_fast.models.folder import ModelFolderError

log = logging.getLogger(__name__)

DEFAULT_START_SIGMAS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
DEFAULT_ROLLOUT_STEPS = 6
"""Six sampler steps: 0.15 of the unshifted time at S = 40, long enough for errors to compound."""
DEFAULT_SAMPLES = 16
# Copies of a batch per forward (before CFG doubles them): bounds memory on large models.
MAX_ROWS = 64

_STEP = re.compile(r"^step-(\d+)$")


@dataclasses.dataclass
class HeldOut:
    """The measured samples, in batches of one bucket each, on the device."""

    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    """(z0 [B,C,h,w] float32, z1 [B,C,h,w] float32, prompt_embeds [B,L,D], pooled [B,P])."""
    null_embeds: torch.Tensor
    null_pooled: torch.Tensor
    latent_channels: int
    info: dict[str, Any]


def load_held_out(cfg: Config, *, samples: int, seed: int, batch_size: int, device: torch.device,
                  dtype: torch.dtype, output_dir: str, data_jsonl: str | None = None) -> HeldOut:
    """`samples` samples of the run's data (or `data_jsonl`) with their fixed noise (module docstring),
    grouped by bucket into batches of at most `batch_size`."""
    from soar_fast.data.build import build_source
    from soar_fast.models.folder import check_model_folder

    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch size must be >= 1, got {samples} and {batch_size}")
    # One sample per source batch: which samples are measured then depends on the data and train.seed
    # only, not on the batch size (the bucket sampler's order does), and no small bucket is left out.
    data = dataclasses.replace(cfg.data, random_flip=False, batch_size=1, num_workers=0)
    if data_jsonl:
        data = dataclasses.replace(data, jsonl=data_jsonl, image_dir=None, cache=None)
    elif data.jsonl is None and data.cache is None:
        demo_cache = os.path.join(cfg.run.output_dir, "demo-data", "cache")
        if os.path.isdir(demo_cache):
            data = dataclasses.replace(data, cache=demo_cache)
    check_model_folder(cfg.model.path, encodes=data.cache is None, why="diagnostics encode the data set")
    source = build_source(data, cfg.model, seed=cfg.train.seed, output_dir=output_dir, device=device, dtype=dtype)
    available = source.steps_per_epoch
    if available < samples:
        log.warning("diagnose: %d samples asked, the data holds %d; using %d", samples, available, available)
    by_bucket: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
    for i, one in zip(range(min(samples, available)), source):
        by_bucket.setdefault(tuple(one.latent_mean.shape[1:]), []).append((seed + i, one))
    batches = []
    for group in by_bucket.values():
        for at in range(0, len(group), batch_size):
            chunk = group[at:at + batch_size]
            mean = torch.cat([one.latent_mean for _, one in chunk]).float()
            z1, eps = _noise([s for s, _ in chunk], tuple(mean.shape[1:]))
            stds = [one.latent_std for _, one in chunk]
            z0 = mean if any(s is None for s in stds) else mean + torch.cat(stds).float() * eps.to(device)
            batches.append((z0, z1.to(device), torch.cat([one.prompt_embeds for _, one in chunk]),
                            torch.cat([one.pooled for _, one in chunk])))
    info = dataclasses.asdict(source.info) if hasattr(source, "info") else {}
    taken = sum(b[0].shape[0] for b in batches)
    return HeldOut(batches, source.null_embeds, source.null_pooled, int(source.latent_channels),
                   {**info, "samples": taken, "train_seed": cfg.train.seed})


def _noise(seeds: Sequence[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    z1, eps = [], []
    for s in seeds:
        g = torch.Generator("cpu").manual_seed(int(s))
        z1.append(torch.randn(shape, generator=g))
        eps.append(torch.randn(shape, generator=g))
    return torch.stack(z1), torch.stack(eps)


def checkpoint_folder(path: str) -> str:
    """The folder `trained_transformer` reads for `path`: a `checkpoints/step-N`, transformer or LoRA
    adapter folder as given, a run folder's exported `transformer/` (`lora/`), else its latest checkpoint."""
    from soar_fast.models.lora_io import find_adapter_folder
    from soar_fast.train.checkpoint import latest_checkpoint

    if not os.path.isdir(path):
        raise ModelFolderError(f"--checkpoint {path}: no such folder")
    if (os.path.isdir(os.path.join(path, "transformer")) or os.path.isfile(os.path.join(path, "config.json"))
            or find_adapter_folder(path) is not None):  # a LoRA checkpoint, run or adapter folder
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ModelFolderError(f"--checkpoint {path}: not a checkpoint, transformer or run folder "
                               "(no transformer/, config.json or checkpoints/step-N)")
    return latest.path


def checkpoint_step(path: str) -> int | None:
    m = _STEP.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def guided_velocity(transformer: torch.nn.Module, embeds: torch.Tensor, pooled: torch.Tensor,
                    null_embeds: torch.Tensor, null_pooled: torch.Tensor, *, guided: bool,
                    num_train_timesteps: int) -> GuidedVelocity:
    """The `exposure_bias` velocity of one batch: one forward on [uncond; cond] rows when `guided`
    (the sampler's batching), at timestep τ = N·σ, in the transformer's dtype; outputs float32."""
    from soar_fast.models.transformer import velocity_fn

    forward = velocity_fn(transformer)
    dtype = next(transformer.parameters()).dtype
    b = embeds.shape[0]

    def velocity(z: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        copies = z.shape[0] // b
        c, p = embeds.repeat(copies, 1, 1).to(dtype), pooled.repeat(copies, 1).to(dtype)
        tau = sigma.to(torch.float32) * num_train_timesteps
        x = z.to(dtype)
        if not guided:
            return forward(x, tau, c, p).float(), None
        rows = z.shape[0]
        v = forward(torch.cat([x, x]), torch.cat([tau, tau]),
                    torch.cat([null_embeds.to(dtype).expand(rows, -1, -1), c]),
                    torch.cat([null_pooled.to(dtype).expand(rows, -1), p]))
        v_u, v_c = v.float().chunk(2)
        return v_c, v_u
    return velocity


def _device(cfg: Config) -> torch.device:
    if cfg.run.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@torch.no_grad()
def diagnose_checkpoints(cfg: Config, checkpoints: Sequence[str], *, samples: int = DEFAULT_SAMPLES,
                         sigmas: Sequence[float] = DEFAULT_START_SIGMAS,
                         rollout_steps: int = DEFAULT_ROLLOUT_STEPS, cfg_scale: float | None = None,
                         sampling_steps: int | None = None, seed: int | None = None,
                         batch_size: int | None = None, data_jsonl: str | None = None,
                         output_dir: str | None = None, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Exposure-bias numbers of each checkpoint on the same samples, noise and sigma paths.

    `cfg`: the run's config (model, data, scheduler, dtype). Defaults: `cfg_scale` = `soar.cfg_scale`,
    `sampling_steps` = `soar.num_sampling_steps` (S of the rollout step t ← t − 1/S), `seed` = `eval.seed`,
    `batch_size` = `data.batch_size`; `output_dir` (default `<run.output_dir>/diagnose`) receives what
    reading the data writes (`data_report.json`, a generated demo set when the run's is missing);
    `labels` name the checkpoints in the plot (default: the last three parts of each path).
    Returns `{"settings": {...}, "checkpoints": [{"label", "checkpoint", "path", "step", "points": [...]}]}`,
    one entry per checkpoint in the given order, `points` as `ExposureBias.summary()` (JSON-ready)."""
    from soar_fast.eval.pipeline import trained_transformer
    from soar_fast.models.transformer import scheduler_config
    from soar_fast.soar.grid import SigmaGrid

    if not checkpoints:
        raise ValueError("diagnose: no checkpoint given")
    w = cfg.soar.cfg_scale if cfg_scale is None else float(cfg_scale)
    steps = cfg.soar.num_sampling_steps if sampling_steps is None else int(sampling_steps)
    seed = cfg.eval.seed if seed is None else int(seed)
    out = output_dir or os.path.join(cfg.run.output_dir, "diagnose")
    folders = [checkpoint_folder(c) for c in checkpoints]
    if labels is not None and len(labels) != len(checkpoints):
        raise ValueError(f"diagnose: {len(labels)} labels for {len(checkpoints)} checkpoints")
    names = list(labels) if labels is not None else [_short(c) for c in checkpoints]
    device = _device(cfg)
    dtype = resolve_dtype(cfg.eval.dtype, device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.run.cpu_threads > 0:
        torch.set_num_threads(cfg.run.cpu_threads)  # see run.cpu_threads
    try:
        os.makedirs(out, exist_ok=True)
        grid = SigmaGrid.from_scheduler_config(scheduler_config(cfg.model))
        paths = rollout_paths(grid, sigmas, num_sampling_steps=steps, rollout_steps=rollout_steps)
        held = load_held_out(cfg, samples=samples, seed=seed, batch_size=batch_size or cfg.data.batch_size,
                             device=device, dtype=dtype, output_dir=out, data_jsonl=data_jsonl)
        results = []
        for name, given, folder in zip(names, checkpoints, folders):
            transformer = trained_transformer(folder, base_path=cfg.model.path, dtype=dtype)
            if next(transformer.parameters()).dtype != dtype:  # a merged LoRA adapter is fp32
                transformer = transformer.to(dtype)
            transformer = transformer.to(device).requires_grad_(False).eval()
            channels = int(transformer.config.in_channels)
            if channels != held.latent_channels:
                raise ModelFolderError(f"--checkpoint {given}: the transformer takes {channels} latent channels, "
                                       f"the data's VAE makes {held.latent_channels}")
            parts = []
            for z0, z1, embeds, pooled in held.batches:
                velocity = guided_velocity(transformer, embeds, pooled, held.null_embeds, held.null_pooled,
                                           guided=w > 1.0, num_train_timesteps=grid.num_train_timesteps)
                parts.append(exposure_bias(velocity, z0, z1, paths, cfg_scale=w,
                                           starts_per_forward=max(1, MAX_ROWS // z0.shape[0])))
            results.append({"label": name, "checkpoint": given, "path": folder, "step": checkpoint_step(folder),
                            "points": merge(parts).summary()})
            log.info("diagnose: %s measured on %d samples", given, held.info["samples"])
            del transformer
    finally:
        torch.set_num_threads(threads)
    settings = {"samples": held.info["samples"], "seed": seed, "cfg_scale": w, "sampling_steps": steps,
                "rollout_steps": int(rollout_steps), "start_sigmas": [float(s) for s in sigmas],
                "num_train_timesteps": grid.num_train_timesteps, "shift": grid.shift,
                "model": cfg.model.path or f"preset:{cfg.model.preset}", "dtype": str(dtype).removeprefix("torch."),
                "device": device.type, "data": held.info}
    return {"settings": settings, "checkpoints": results}


def run_folder_of(checkpoint: str) -> Path:
    """The run folder a checkpoint belongs to: `<run>/checkpoints/step-N`, `<run>/transformer` or `<run>/lora` -> `<run>`;
    anything else is taken as the run folder itself."""
    p = Path(os.path.normpath(checkpoint))
    if _STEP.match(p.name) and p.parent.name == "checkpoints":
        return p.parent.parent
    if p.name in ("transformer", "lora"):
        return p.parent
    return p


def _short(path: str) -> str:
    parts = [x for x in Path(os.path.normpath(path)).parts if x not in (os.sep, "/")]
    return "/".join(parts[-3:])
