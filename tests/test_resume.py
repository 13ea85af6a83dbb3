"""Exact resume: a resumed run logs bit-identical losses to an uninterrupted one (CPU, fixed seed);
SIGTERM finishes the step, saves and exits 0."""

from __future__ import annotations

import json
import signal
import time

import torch

from tests.conftest import FakeSource, popen_cli, tiny_config


def _records(out) -> dict[int, dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def _same_losses(a: dict, b: dict, steps) -> None:
    for step in steps:
        for key in ("loss", "loss_main", "loss_aux", "grad_norm", "lr"):
            assert a[step][key] == b[step][key], f"step {step} {key}: {a[step][key]!r} != {b[step][key]!r}"


def test_resume_is_exact_in_process(tmp_path):
    from soar_fast.train.checkpoint import latest_checkpoint, load_state, load_weights
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    overrides = ["--train.max_steps=6", "--soar.num_rollout_paths=2", "--data.cond_dropout_rate=0.3"]
    a = Trainer.build(tiny_config(full, overrides), source=FakeSource())
    fit(a)
    b = Trainer.build(tiny_config(part, [*overrides, "--train.max_steps=4"]), source=FakeSource())
    fit(b)
    c = Trainer.build(tiny_config(part, overrides), source=FakeSource())
    ckpt = latest_checkpoint(str(part))
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    assert c.step == 4
    fit(c)
    ra, rc = _records(full), _records(part)
    assert sorted(rc) == [1, 2, 3, 4, 5, 6]
    _same_losses(ra, rc, [5, 6])
    for (name, p), q in zip(a.model.named_parameters(), c.model.parameters()):
        assert torch.equal(p, q), name


def test_resume_through_the_cli_with_the_demo_data(tmp_path):
    """`soar-fast train` (embedded default, real demo source) 6 steps vs 4 steps + `--resume` to 6."""
    from soar_fast import cli

    common = ["train", "--train.log_every=1", "--checkpoint.every=2", "--log.progress=false",
              "--log.tensorboard=false", "--soar.trajectory_length=2", "--data.demo_size=16"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main([*common, f"--run.output_dir={full}", "--train.max_steps=6"]) == 0
    assert cli.main([*common, f"--run.output_dir={part}", "--train.max_steps=4"]) == 0
    assert cli.main([*common, f"--run.output_dir={part}", "--train.max_steps=6", "--resume"]) == 0
    ra, rp = _records(full), _records(part)
    assert sorted(rp) == [1, 2, 3, 4, 5, 6]
    _same_losses(ra, rp, [5, 6])


def test_sigterm_finishes_the_step_saves_and_exits_0(tmp_output_dir):
    out = tmp_output_dir
    proc = popen_cli("train", f"--run.output_dir={out}", "--train.max_steps=100000", "--checkpoint.every=0",
                     "--train.log_every=1", "--log.tensorboard=false", "--log.progress=false",
                     "--soar.trajectory_length=2", "--data.demo_size=16")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"trainer exited early:\n{proc.stdout.read()}"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "Traceback" not in output and "SIGTERM" in output
    from soar_fast.train.checkpoint import latest_checkpoint

    last = max(_records(out))
    ckpt = latest_checkpoint(str(out))
    assert ckpt is not None and ckpt.step == last
    assert not (out / "transformer").exists(), "an interrupted run must not write the final transformer"


def test_resume_logs_the_same_windows_when_checkpoints_fall_between_log_steps(tmp_path):
    """log_every=2, checkpoint.every=3: the step-4 record of a run resumed from step 3 averages the same
    steps as the uninterrupted run's (a log window never spans a checkpoint)."""
    from soar_fast.train.checkpoint import load_state, load_weights, resolve_checkpoint
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    overrides = ["--train.max_steps=6", "--train.log_every=2", "--checkpoint.every=3"]
    fit(Trainer.build(tiny_config(full, overrides), source=FakeSource()))
    fit(Trainer.build(tiny_config(part, [*overrides, "--train.max_steps=3"]), source=FakeSource()))
    c = Trainer.build(tiny_config(part, overrides), source=FakeSource())
    ckpt = resolve_checkpoint(str(part / "checkpoints" / "step-3"))
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    fit(c)
    ra, rc = _records(full), _records(part)
    assert sorted(ra) == sorted(rc) == [2, 3, 4, 6]
    _same_losses(ra, rc, [4, 6])
