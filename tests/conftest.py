"""Shared test helpers (kept light: no heavy imports at collection time).

- `tmp_output_dir`: a fresh run folder.
- `run_cli(*args, env=None, timeout=...)`: `python -m soar_fast.cli ...` in a subprocess.
- `FakeSource`: a tiny in-memory TrainSource (random latents/embeddings, honest state_dict), so trainer
  tests run without the data package or any encoder.
- `tiny_config(output_dir, **overrides)`: the embedded default shrunk for unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tmp_output_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "soar_fast.cli", *args], capture_output=True, text=True,
                          check=False, env=cli_env(env), timeout=timeout, cwd=cwd or REPO)


def popen_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "soar_fast.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(env), cwd=REPO)


class FakeSource:
    """Deterministic batches: batch i is drawn from a generator seeded with (seed, i); the state is i."""

    def __init__(self, *, batch_size: int = 2, channels: int = 4, size: int = 8, seq: int = 6, dim: int = 32,
                 pooled_dim: int = 16, seed: int = 0, with_std: bool = True) -> None:
        import torch

        self.batch_size, self.latent_channels, self.steps_per_epoch = batch_size, channels, 1000
        self.shape = (batch_size, channels, size, size)
        self.seq, self.dim, self.pooled_dim, self.seed, self.with_std = seq, dim, pooled_dim, seed, with_std
        g = torch.Generator().manual_seed(seed + 10_000)
        self.null_embeds = torch.randn(1, seq, dim, generator=g)
        self.null_pooled = torch.randn(1, pooled_dim, generator=g)
        self.cursor = 0

    def _batch(self, i: int):
        import torch

        from soar_fast.data.source import TrainBatch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        mean = torch.randn(self.shape, generator=g)
        std = 0.1 * torch.rand(self.shape, generator=g) if self.with_std else None
        embeds = torch.randn(self.batch_size, self.seq, self.dim, generator=g)
        pooled = torch.randn(self.batch_size, self.pooled_dim, generator=g)
        return TrainBatch(latent_mean=mean, latent_std=std, prompt_embeds=embeds, pooled=pooled)

    def __iter__(self):
        while True:
            batch = self._batch(self.cursor)
            self.cursor += 1
            yield batch

    def set_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.cursor = int(state["cursor"])


def tiny_config(output_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Config for in-process trainer tests: few steps, every step logged, no progress bar."""
    from soar_fast.config_io import load_config

    base = [f"--run.output_dir={output_dir}", "--run.device=cpu", "--train.max_steps=4", "--train.log_every=1",
            "--checkpoint.every=2", "--log.progress=false", "--log.tensorboard=false", "--log.plot=false",
            "--soar.trajectory_length=2"]
    return load_config(None, [*base, *overrides])


def run_ranks(worker, world: int, tmp: str, *, timeout_s: float) -> dict:
    """Spawn `world` local ranks of `worker(tmp)` (one CPU thread each), require every one to exit 0, and
    return what rank 0 saved to `tmp/results.pt`."""
    import torch

    from soar_fast.parallel.launch import spawn_local

    codes = spawn_local(worker, world, tmp, timeout_s=timeout_s, env={"OMP_NUM_THREADS": "1"})
    assert codes == [0] * world, f"{world}-rank run failed, exit codes {codes} (None = killed at the deadline)"
    return torch.load(os.path.join(tmp, "results.pt"), weights_only=True)
