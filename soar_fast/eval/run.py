"""`soar-fast eval CONFIG`: sample a benchmark prompt set and score it.

Writes under `run.output_dir` (under `<run>/eval/step-N/` when that folder is a soar-fast run, see
`eval/from_run.py`):
- `images/...png` (see generate.py for the layout),
- `evaluation_results.jsonl`: one line per image, in (row, image) order: row, image_index, seed, prompt,
  metadata, image_path (relative to the folder), scores {name: value},
- `average_scores.json`: each metric averaged over the unique images, on its own scale (GenEval as the
  task mean plus per-task accuracies, PickScore on the ×26 scale), and `run` (the settings),
- `summary.md`: the same as markdown tables; `grid.png`: a contact sheet of the first images.
Scorers load before any sampling, so a missing weight file fails in seconds, not after an hour.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from soar_fast.config import Config
from soar_fast.eval.aggregate import summary_markdown
from soar_fast.eval.common import config_rows, run_info, session
from soar_fast.eval.from_run import sampling_config
from soar_fast.eval.generate import free_cuda, generate, plan_items, write_json, write_jsonl
from soar_fast.eval.partition import barrier, gather_records, merge_records, shard
from soar_fast.eval.pipeline import load_pipeline
from soar_fast.eval.sample import write_grid
from soar_fast.eval.scorers import load_scorers
from soar_fast.models.folder import check_model_folder

log = logging.getLogger(__name__)


def main_eval(cfg: Config, args: Any = None) -> int:
    cfg = sampling_config(cfg, "eval")
    check_model_folder(cfg.model.path, encodes=True, why="sampling encodes prompts and decodes latents")
    e = cfg.eval
    out = cfg.run.output_dir
    rows = config_rows(e)
    layout = "geneval" if "geneval" in e.scorers else "flat"
    items = plan_items(rows, e.images_per_prompt, e.seed, layout)
    with session(cfg) as (env, device):
        scorers = load_scorers(e.scorers, e, device)
        my_rows = {r.index for r in shard(rows, env.rank, env.world)}
        pipe = load_pipeline(cfg.model, e, device)
        records, seconds = generate(pipe, [it for it in items if it.row.index in my_rows], out,
                                    batch_size=e.batch_size, scorers=scorers, layout=layout,
                                    progress=env.is_main and cfg.log.progress,
                                    pad_batches=device.type == "cuda" and e.compile)
        del pipe
        free_cuda()
        merged = merge_records(gather_records(records, env), [it.key for it in items])
        barrier(env)
        if env.is_main:
            for scorer in scorers:
                if scorer.on_files:  # after every rank's images exist; GenEval's detector runs once
                    for rec, scores in zip(merged, scorer.score_files(merged, out)):
                        rec["scores"].update(scores)
            averages: dict[str, Any] = {}
            for scorer in scorers:
                averages.update(scorer.aggregate(merged))
            info = run_info(cfg, env, len(rows), len(merged), seconds)
            write_jsonl(os.path.join(out, "evaluation_results.jsonl"), merged)
            write_json(os.path.join(out, "average_scores.json"), {**averages, "run": info})
            with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
                f.write(summary_markdown(averages, info))
            grid = write_grid(out, merged)
            print(f"{_report(averages, out)} (grid: {grid})", flush=True)
        barrier(env)
    return 0


def _report(averages: dict[str, Any], out: str) -> str:
    parts = [f"{k} {v:.4f}" for k, v in averages.items()
             if isinstance(v, float) and math.isfinite(v)]
    return f"eval -> {out}: " + (", ".join(parts) if parts else "no scores (eval.scorers is empty)")
