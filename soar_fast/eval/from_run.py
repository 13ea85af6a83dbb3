"""Sampling a soar-fast run: what `sample` and `eval` take from the run's own `config.toml`.

A run is a folder that `soar-fast train` wrote: `config.toml` beside `checkpoints/` or `transformer/`
(a LoRA run's `lora/`).
`sampling_config(cfg, command)` finds the run to sample, resolves what the config leaves open, and
returns the config the command runs with:

- the run: `eval.checkpoint` when it lies in a run (the run folder itself, one of its
  `checkpoints/step-N`, or its final `transformer/` / `lora/` or their `_ema` twins; a run folder means
  its latest checkpoint, whose `ema/` `eval.use_ema` takes). A LoRA run's base is the run's `[model]`. With no
  `eval.checkpoint`, `run.output_dir` when it holds a run: its latest checkpoint is sampled and the
  outputs go to `<run>/<command>/step-N/` (`step-N-ema/` with `eval.use_ema`), never into the run's own
  files;
- from the run: the `[model]` fields this config leaves at their defaults, `eval.resolution` (None →
  the run's `model.resolution`) and `eval.max_sequence_length` (None → the run's
  `data.max_sequence_length`); without prompts, a demo run gets held-out demo captions;
- without a run, the two None fields take this config's `model.resolution` and
  `data.max_sequence_length`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from soar_fast.config import Config, ModelConfig
from soar_fast.config_io import ConfigError, check_values, load_sections, read_toml
from soar_fast.models.presets import preset_vae

log = logging.getLogger(__name__)

HELD_OUT_PROMPTS = 8
"""Held-out demo captions sampled for a demo run when no prompts are given (its first four are the
training previews' prompts, `eval.preview.preview_prompts`)."""
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class TrainedRun:
    folder: Path
    config: Config
    """The run's config.toml: its [model], [data] and [train] tables (the rest is not read)."""
    transformer: str
    """What to sample: a `checkpoints/step-N` folder, or a final `transformer/` or `lora/` folder (or the
    `transformer_ema/` / `lora_ema/` beside it)."""
    step: int | None
    """The checkpoint's step; None for the final weights (the run's `train.max_steps`)."""

    @property
    def trained_on_demo(self) -> bool:
        return self.config.data.jsonl is None and self.config.data.cache is None


# A run's final weights (a LoRA run's adapter instead of `transformer/`) and their EMA beside them.
_FINAL = ("transformer", "lora")
_FINAL_EMA = ("transformer_ema", "lora_ema")


def _is_run(folder: Path) -> bool:
    return (folder / "config.toml").is_file() and any((folder / n).is_dir() for n in ("checkpoints", *_FINAL))


def _read_run(folder: Path) -> Config:
    path = str(folder / "config.toml")
    cfg = load_sections(path, ("model", "data", "train"))
    if "vae" not in read_toml(path).get("model", {}):
        cfg.model.vae = "tiny"  # a run saved before `model.vae` existed trained with the tiny VAE
    return cfg


def find_run(path: str | os.PathLike) -> TrainedRun | None:
    """The soar-fast run `path` belongs to (see the module docstring), or None."""
    from soar_fast.models.lora_io import is_adapter_folder
    from soar_fast.train.checkpoint import is_complete, latest_checkpoint

    p = Path(path)
    if _is_run(p):
        latest = latest_checkpoint(str(p))
        if latest is not None:
            return TrainedRun(p, _read_run(p), latest.path, latest.step)
        if (p / "transformer" / "config.json").is_file():
            return TrainedRun(p, _read_run(p), str(p / "transformer"), None)
        if is_adapter_folder(str(p / "lora")):
            return TrainedRun(p, _read_run(p), str(p / "lora"), None)
        return None
    folder = p.parent if p.name in _FINAL else p
    m = _STEP_DIR.match(folder.name)
    if m and folder.parent.name == "checkpoints" and _is_run(folder.parent.parent) and is_complete(str(folder)):
        return TrainedRun(folder.parent.parent, _read_run(folder.parent.parent), str(p), int(m.group(1)))
    if p.name in (*_FINAL, *_FINAL_EMA) and _is_run(p.parent):
        return TrainedRun(p.parent, _read_run(p.parent), str(p), None)
    return None


def _model_from_run(mine: ModelConfig, run: ModelConfig) -> ModelConfig:
    """The run's [model], except the fields this config sets away from their defaults."""
    default = ModelConfig()
    told = {f.name: getattr(mine, f.name) for f in dataclasses.fields(mine)
            if getattr(mine, f.name) != getattr(default, f.name)}
    return dataclasses.replace(run, **told)


def sampling_config(cfg: Config, command: str) -> Config:
    """The config `command` (`sample` or `eval`) runs with; see the module docstring. A ConfigError
    when there is nothing to sample (no prompts, and no demo run to take held-out captions from)."""
    from soar_fast.data.demo import demo_captions, held_out_captions

    e, run, out = cfg.eval, None, cfg.run.output_dir
    if e.checkpoint:
        run = find_run(e.checkpoint)
        if run is None and _is_run(Path(e.checkpoint)):
            raise ConfigError(f"eval.checkpoint={e.checkpoint}: a run with no complete checkpoint or "
                              "transformer/ to sample yet")
        checkpoint = run.transformer if run is not None else e.checkpoint
    elif _is_run(Path(out)):
        run = find_run(out)
        if run is None:
            raise ConfigError(f"run.output_dir={out} holds a run with no complete checkpoint or transformer/ "
                              "to sample yet: train it first, or set eval.checkpoint")
        checkpoint = run.transformer
        # The EMA's images beside the weights' (`step-N-ema`), never over them.
        name = (f"step-{run.step}" if run.step is not None else "final") + ("-ema" if e.use_ema else "")
        out = os.path.join(out, command, name)
    else:
        checkpoint = None
    model, data = cfg.model, cfg.data
    if run is not None:
        model, data = _model_from_run(cfg.model, run.config.model), run.config.data
        log.info("sampling the run in %s: %s (%s)", run.folder, checkpoint,
                 "model.path " + model.path if model.path else
                 f"preset {model.preset}, the {preset_vae(model.preset, model.vae)} VAE")
    prompt_list = list(e.prompt_list)
    if not e.prompts and not prompt_list:
        if run is None or not run.trained_on_demo:
            where = "" if run is None else f" (the run in {run.folder} did not train on the demo set)"
            raise ConfigError("no prompts: set eval.prompts (a prompt file) or eval.prompt_list" + where)
        c = run.config
        prompt_list = held_out_captions(demo_captions(c.data, c.model, seed=c.train.seed), HELD_OUT_PROMPTS,
                                        seed=c.train.seed)
        log.info("no prompts given: %d held-out demo captions", len(prompt_list))
    resolved = dataclasses.replace(
        cfg, model=model, run=dataclasses.replace(cfg.run, output_dir=out),
        eval=dataclasses.replace(e, checkpoint=checkpoint, prompt_list=prompt_list,
                                 resolution=e.resolution or model.resolution,
                                 max_sequence_length=e.max_sequence_length or data.max_sequence_length))
    check_values(resolved)
    return resolved

