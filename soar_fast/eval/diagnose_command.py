"""`soar-fast diagnose [CONFIG] --checkpoint PATH [--checkpoint PATH ...]`: exposure bias, measured.

Config: CONFIG when given, else the `config.toml` saved in the first checkpoint's run folder (its
`run.output_dir` then becomes that folder, wherever the run was started from), else the defaults; the
`--section.key=value` overrides apply on top. Writes `diagnose.json` and `diagnose.png` into `--out`
(default `<run.output_dir>/diagnose`) and prints where they went (docs/eval.md, "Exposure-bias diagnostics").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from soar_fast.config import Config
from soar_fast.config_io import ConfigError, load_config
from soar_fast.eval.diagnose import DEFAULT_START_SIGMAS, diagnose_checkpoints, run_folder_of
from soar_fast.eval.diagnose_plot import plot_diagnostics
from soar_fast.eval.generate import write_json

log = logging.getLogger(__name__)


def run_config(cfg: Config, args: Any) -> Config:
    """CONFIG's config, else the first checkpoint's run's saved one (module docstring), else `cfg`."""
    if getattr(args, "config", None):
        return cfg
    run = run_folder_of(args.checkpoint[0])
    saved = run / "config.toml"
    if not saved.is_file():
        return cfg
    log.info("diagnose: config of the run %s", saved)
    loaded = load_config(str(saved), list(getattr(args, "overrides", ()) or ()))
    if any(o.removeprefix("--").startswith("run.output_dir") for o in getattr(args, "overrides", ()) or ()):
        return loaded
    return dataclasses.replace(loaded, run=dataclasses.replace(loaded.run, output_dir=str(run)))


def parse_sigmas(text: str | None) -> tuple[float, ...]:
    if not text:
        return DEFAULT_START_SIGMAS
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--sigmas: expected comma-separated numbers in (0, 1], got {text!r}") from None


def main_diagnose(cfg: Config, args: Any) -> int:
    cfg = run_config(cfg, args)
    out = args.out or os.path.join(cfg.run.output_dir, "diagnose")
    given = {"samples": args.samples, "rollout_steps": args.rollout_steps}
    try:
        result = diagnose_checkpoints(cfg, args.checkpoint, sigmas=parse_sigmas(args.sigmas),
                                      cfg_scale=args.cfg_scale, sampling_steps=args.sampling_steps, seed=args.seed,
                                      batch_size=args.batch_size, data_jsonl=args.data, output_dir=out,
                                      **{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"diagnose: {e}") from None
    json_path = os.path.join(out, "diagnose.json")
    write_json(json_path, result)
    png = plot_diagnostics(result, os.path.join(out, "diagnose.png"))
    for entry in result["checkpoints"]:
        print(_line(entry))
    print(f"diagnose -> {json_path} (plot: {png})")
    return 0


def _line(entry: dict[str, Any]) -> str:
    pts = entry["points"]

    def mean(f) -> float:
        return sum(f(p) for p in pts) / len(pts)

    return (f"{entry['label']}: mean over {len(pts)} start sigmas: drift {mean(lambda p: p['drift']):.4f}, "
            f"velocity error teacher-forced {mean(lambda p: p['teacher_forced_end']['velocity_error']):.4f} "
            f"vs self-rollout {mean(lambda p: p['self_rollout']['velocity_error']):.4f}")
