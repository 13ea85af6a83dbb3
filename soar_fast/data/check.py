"""`soar-fast data check CONFIG`: scan the data set under `data.on_bad_sample`, write
`<output_dir>/data_report.json` and print a summary; no encoder is loaded, nothing trains."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from soar_fast.config import Config
from soar_fast.config_io import ConfigError
from soar_fast.data.build import report_of, scan_data
from soar_fast.data.report import summary, write_report
from soar_fast.models.folder import check_model_folder


def world_of(args: Any) -> tuple[int, int]:
    """(rank, world) from `--rank/--world` when the CLI has them, else torchrun's environment."""
    rank = getattr(args, "rank", None)
    world = getattr(args, "world", None)
    rank = int(rank if rank is not None else os.environ.get("RANK", "0"))
    world = int(world if world is not None else os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ConfigError(f"--rank {rank} is outside --world {world}")
    return rank, world


def main_check(cfg: Config, args: Any = None) -> int:
    check_model_folder(cfg.model.path, encodes=False)  # bucket sides follow the model's patch and VAE
    output_dir = Path(cfg.run.output_dir)
    _, world = world_of(args)
    # DataError: the CLI prints one line.
    result = scan_data(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=output_dir, progress=sys.stderr.isatty())
    report = report_of(cfg.data, result, world)
    path = write_report(report, output_dir)
    print(summary(report))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":  # `python -m soar_fast.data.check [CONFIG] [--section.key=value ...]`
    from soar_fast.config_io import load_config

    argv = sys.argv[1:]
    config_path = argv[0] if argv and not argv[0].startswith("--") else None
    sys.exit(main_check(load_config(config_path, [a for a in argv if a.startswith("--")])))
