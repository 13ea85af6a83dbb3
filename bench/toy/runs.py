"""The training runs of the toy experiment: one TOML per run, trained by `soar-fast train` in its
own process (one CPU thread each, `Protocol.workers` at once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.toy.protocol import Protocol


@dataclass(frozen=True)
class Run:
    name: str
    """`base`, or `<arm>-s<seed>` with arm sft | soar | sft_flops."""
    arm: str
    seed: int
    steps: int
    lr: float
    warmup: int
    objective: str
    model: Path
    every: int

    def folder(self, root: Path) -> Path:
        return root / "runs" / self.name


def config_toml(run: Run, p: Protocol, train_jsonl: Path, out: Path) -> str:
    schedule = "constant_with_warmup" if run.warmup else "constant"
    return f"""# {run.name}: written by bench/toy (docs/experiments.md)
[run]
output_dir = "{out}"
name = "{run.name}"
device = "cpu"
cpu_threads = 1

[model]
path = "{run.model}"
resolution = {p.side}

[data]
jsonl = "{train_jsonl}"
batch_size = {p.batch_size}
max_sequence_length = {p.text_tokens}

[soar]
objective = "{run.objective}"
trajectory_length = {p.trajectory_length}
cfg_scale = {p.cfg_scale}
num_sampling_steps = {p.sampling_steps}

[optim]
lr = {run.lr}
lr_scheduler = "{schedule}"
lr_warmup_steps = {run.warmup}

[train]
max_steps = {run.steps}
seed = {run.seed}
log_every = {max(1, min(25, run.steps))}

[checkpoint]
every = {run.every}

[log]
tensorboard = false
progress = false
sample_every = 0
"""


def train(run: Run, p: Protocol, root: Path, train_jsonl: Path) -> dict:
    """Train `run` (a finished run is kept: its record is read back); returns its record."""
    out = run.folder(root)
    record_path = out / "toy-run.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"{run.name}.toml"
    cfg.write_text(config_toml(run, p, train_jsonl, out))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started = time.perf_counter()
    with open(out.parent / f"{run.name}.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "soar_fast", "train", str(cfg), "--run.overwrite=true"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{run.name}: soar-fast train exited {code} (log: {out.parent / (run.name + '.log')})")
    checkpoints = sorted((out / "checkpoints").glob("step-*"), key=lambda d: int(d.name.split("-")[1]))
    record = {"name": run.name, "arm": run.arm, "seed": run.seed, "steps": run.steps, "wall_s": round(wall, 1),
              "checkpoints": [str(c) for c in checkpoints], "losses": _losses(out / "metrics.jsonl")}
    record_path.write_text(json.dumps(record, indent=1))
    return record


def _losses(metrics: Path) -> list[dict]:
    rows = []
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            rows.append({k: row[k] for k in ("step", "loss", "loss_main", "loss_aux") if k in row})
    return rows
