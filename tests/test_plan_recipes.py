"""The memory-lean recipes of docs/performance.md (examples/*.toml) train: each for two steps on the tiny
preset (same `[accel]`, `[train]` and `[parallel]` settings, CPU-sized model and data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from soar_fast.config_io import load_config
from tests.conftest import run_cli

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
TINY = ["--model.preset=tiny", "--model.resolution=64", "--data.batch_size=2", "--data.demo_size=8",
        "--train.max_steps=2", "--train.log_every=1", "--checkpoint.every=0", "--run.device=cpu",
        "--log.progress=false", "--log.tensorboard=false", "--log.plot=false", "--train.mixed_precision=no"]


def test_there_are_recipes():
    names = {p.stem for p in EXAMPLES}
    assert {"lean-80gb", "lean-48gb", "lean-24gb-fsdp2", "lean-one-gpu"} <= names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_recipe_trains_on_the_tiny_preset(path, tmp_path):
    cfg = load_config(str(path))
    assert cfg.model.preset == "sd35m" and cfg.model.resolution == 512 and cfg.data.batch_size == 4
    r = run_cli("train", str(path), *TINY, f"--run.output_dir={tmp_path / 'run'}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 2
