"""`soar-fast sample [CONFIG]`: images for the configured prompts, a contact sheet and a JSONL index.

Writes under `run.output_dir` (under `<run>/sample/step-N/` when that folder is a soar-fast run, see
`eval/from_run.py`): `images/<row:05d>-<k:02d>.png`, `grid.png` (the first `GRID_MAX_IMAGES` images)
and `index.jsonl` (row, image_index, seed, prompt, metadata, image_path), and prints where the grid
went. A bare `soar-fast sample` right after `soar-fast train` samples the demo run's latest checkpoint
on held-out demo captions. Runs on every GPU under torchrun, rows split exactly over the ranks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from PIL import Image

from soar_fast.config import Config
from soar_fast.eval.common import config_rows, run_info, session
from soar_fast.eval.from_run import sampling_config
from soar_fast.eval.generate import generate, plan_items, write_jsonl
from soar_fast.eval.images import contact_sheet
from soar_fast.eval.partition import barrier, gather_records, merge_records, shard
from soar_fast.eval.pipeline import load_pipeline
from soar_fast.models.folder import check_model_folder

log = logging.getLogger(__name__)

GRID_MAX_IMAGES = 64


def write_grid(output_dir: str, records: list[dict[str, Any]], name: str = "grid.png") -> str | None:
    """Contact sheet of the first GRID_MAX_IMAGES saved images (read back from disk: all ranks' work)."""
    if not records:
        return None
    arrays = [np.asarray(Image.open(os.path.join(output_dir, r["image_path"])).convert("RGB"))
              for r in records[:GRID_MAX_IMAGES]]
    path = os.path.join(output_dir, name)
    contact_sheet(arrays).save(path)
    return path


def main_sample(cfg: Config, args: Any = None) -> int:
    cfg = sampling_config(cfg, "sample")
    check_model_folder(cfg.model.path, encodes=True, why="sampling encodes prompts and decodes latents")
    e = cfg.eval
    rows = config_rows(e)
    items = plan_items(rows, e.images_per_prompt, e.seed)
    with session(cfg) as (env, device):
        my_rows = {r.index for r in shard(rows, env.rank, env.world)}
        mine = [it for it in items if it.row.index in my_rows]
        pipe = load_pipeline(cfg.model, e, device)
        records, seconds = generate(pipe, mine, cfg.run.output_dir, batch_size=e.batch_size,
                                    progress=env.is_main and cfg.log.progress,
                                    pad_batches=device.type == "cuda" and e.compile)
        merged = merge_records(gather_records(records, env), [it.key for it in items])
        barrier(env)  # every rank's PNGs are on disk before rank 0 reads them for the grid
        if env.is_main:
            for rec in merged:
                rec.pop("scores", None)
            write_jsonl(os.path.join(cfg.run.output_dir, "index.jsonl"), merged)
            grid = write_grid(cfg.run.output_dir, merged)
            info = run_info(cfg, env, len(rows), len(merged), seconds)
            print(f"sampled {len(merged)} images from {len(rows)} prompts in {seconds:.1f}s (rank 0) -> "
                  f"{cfg.run.output_dir} (grid: {grid})", flush=True)
            log.info("sample run: %s", info)
        barrier(env)
    return 0
