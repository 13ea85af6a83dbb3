"""`soar-fast cache CONFIG`: encode the data set once into `data.cache` (text embeddings and VAE
posteriors, see `cache_store.py`). Resumable (finished shards are skipped) and splittable: run it
under torchrun (RANK / WORLD_SIZE) or with `--rank/--world` where the CLI offers them; process
`rank` writes shards i ≡ rank (mod world)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from soar_fast.config import Config
from soar_fast.config_io import ConfigError
from soar_fast.data.build import report_of, scan_data
from soar_fast.data.cache_writer import cache_complete, cache_fingerprint, write_cache
from soar_fast.data.check import world_of
from soar_fast.data.model_dims import encoder_identity
from soar_fast.data.report import summary, write_report
from soar_fast.models.folder import check_model_folder


def _device(rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", str(rank))) % torch.cuda.device_count())
    return torch.device("cpu")


def main_cache(cfg: Config, args: Any = None) -> int:
    if not cfg.data.cache:
        raise ConfigError("data.cache: set the folder to write the cache into (--data.cache=DIR)")
    check_model_folder(cfg.model.path, encodes=True, why="the cache holds their encodings")
    rank, world = world_of(args)
    output_dir = Path(cfg.run.output_dir)
    # A bad input raises DataError, which the CLI prints as one line (exit 1).
    result = scan_data(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=output_dir,
                       progress=rank == 0 and sys.stderr.isatty())
    report = report_of(cfg.data, result, 1)
    if rank == 0:
        write_report(report, output_dir)
        print(summary(report))
    fingerprint = cache_fingerprint(result, encoder_identity(cfg.model, cfg.data), cfg.data.random_flip,
                                    cfg.data.cache_shard_size)
    if cache_complete(cfg.data.cache, fingerprint):
        print(f"cache: {cfg.data.cache} is complete for this data and these encoders; nothing to do")
        return 0
    from soar_fast.data.encoders import load_encoders  # seconds of imports: only when encoding

    encoders = load_encoders(cfg.model, cfg.data, _device(rank))
    stats = write_cache(cfg.data.cache, result, encoders, report=report, random_flip=cfg.data.random_flip,
                        shard_size=cfg.data.cache_shard_size, batch_size=cfg.data.encode_batch_size,
                        workers=cfg.data.num_workers, rank=rank, world=world)
    print(stats.line())
    return 0


if __name__ == "__main__":  # `python -m soar_fast.data.cache [CONFIG] [--section.key=value ...]`
    from soar_fast.config_io import load_config

    argv = sys.argv[1:]
    config_path = argv[0] if argv and not argv[0].startswith("--") else None
    sys.exit(main_cache(load_config(config_path, [a for a in argv if a.startswith("--")])))
