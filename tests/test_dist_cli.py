"""End to end through the CLI: `torchrun --nproc_per_node=2 ... train` with FSDP2 on CPU (gloo) and an EMA,
then the same run resumed in one process from its sharded checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, run_cli

SMALL = ["--log.progress=false", "--log.tensorboard=false", "--log.plot=false", "--soar.trajectory_length=2",
         "--train.log_every=1", "--run.device=cpu"]


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "soar_fast.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=cli_env({"OMP_NUM_THREADS": "1"}),
                          timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_fsdp2_on_two_processes_then_resume_in_one(tmp_path):
    out = tmp_path / "run"
    r = _torchrun("train", "--parallel.strategy=fsdp2", "--train.max_steps=2", "--checkpoint.every=2",
                  "--ema.decay=0.9", f"--run.output_dir={out}", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    state = out / "checkpoints" / "step-2" / "state"
    assert (state / "dcp" / ".metadata").is_file()
    assert sorted(p.name for p in state.glob("rank-*.pt")) == ["rank-00000.pt", "rank-00001.pt"]
    assert (out / "checkpoints" / "step-2" / "transformer" / "config.json").is_file()
    assert (out / "transformer" / "config.json").is_file()
    # The EMA, gathered from the shards: in the checkpoint and exported beside transformer/.
    assert (out / "checkpoints" / "step-2" / "ema" / "ema.safetensors").is_file()
    assert (out / "transformer_ema" / "config.json").is_file()
    # Rank 0 alone writes the metrics: one record per step.
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    r = run_cli("train", "--parallel.strategy=fsdp2", "--train.max_steps=3", "--checkpoint.every=2",
                "--ema.decay=0.9", f"--run.output_dir={out}", "--resume", *SMALL, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "(step 2)" in r.stderr
    assert (out / "checkpoints" / "step-3" / "state" / "dcp" / ".metadata").is_file()
    from soar_fast.models.ema_folder import read_ema_meta

    assert read_ema_meta(str(out / "checkpoints" / "step-3" / "ema" / "ema.safetensors"))["updates"] == "3"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_two_processes_without_a_strategy_is_a_config_error(tmp_path):
    r = _torchrun("train", "--train.max_steps=1", f"--run.output_dir={tmp_path / 'run'}", *SMALL, timeout=120)
    assert r.returncode != 0
    assert "parallel.strategy" in r.stderr


def test_ddp_in_one_process_saves_full_checkpoints(tmp_path):
    """`strategy = ddp` without torchrun (a private one-rank group) writes plain checkpoints of the
    unwrapped transformer and the final export."""
    out = tmp_path / "run"
    r = run_cli("train", "--parallel.strategy=ddp", "--train.max_steps=2", "--checkpoint.every=1",
                f"--run.output_dir={out}", *SMALL, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert (out / "checkpoints" / "step-2" / "transformer" / "config.json").is_file()
    assert (out / "transformer" / "config.json").is_file()
