"""Checkpoints: atomic writes, what counts as a checkpoint, safe loading, and a `kill -9` mid-save."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from soar_fast.models.transformer import ModelFolderError
from soar_fast.train import checkpoint as ckpt
from tests.conftest import popen_cli


class _Tiny(torch.nn.Module):
    """Stands in for the transformer: anything with `save_pretrained` and parameters."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(6.0))

    def save_pretrained(self, folder, safe_serialization=True):
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        save_file({"w": self.w.detach()}, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
        with open(os.path.join(folder, "config.json"), "w") as f:
            f.write("{}")


def test_save_list_prune_and_load(tmp_path):
    out = str(tmp_path)
    model = _Tiny()
    state = {"step": 2, "rng": {"soar": torch.zeros(3, dtype=torch.uint8)}, "data": {"cursor": 5}}
    for step in (2, 4, 6):
        ckpt.save_checkpoint(out, step, transformer=model, state={**state, "step": step}, total_limit=2)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [4, 6]
    latest = ckpt.latest_checkpoint(out)
    loaded = ckpt.load_state(latest)  # weights_only=True inside
    assert loaded["step"] == 6 and loaded["data"] == {"cursor": 5}
    other = _Tiny()
    with torch.no_grad():
        other.w.zero_()
    ckpt.load_weights(other, latest)
    assert torch.equal(other.w, model.w)
    assert ckpt.resolve_checkpoint(out).step == 6
    assert ckpt.resolve_checkpoint(latest.path).step == 6


def test_partial_saves_are_never_checkpoints(tmp_path):
    out = str(tmp_path)
    ckpt.save_checkpoint(out, 2, transformer=_Tiny(), state={"step": 2})
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-4-123" / "transformer").mkdir(parents=True)   # a save killed midway
    (root / "step-6" / "transformer").mkdir(parents=True)            # not complete (hand-made)
    assert ckpt.latest_checkpoint(out).step == 2
    with pytest.raises(ModelFolderError, match="incomplete checkpoint"):
        ckpt.resolve_checkpoint(str(root / "step-6"))
    ckpt.remove_partial_saves(out)
    assert not (root / ".tmp-step-4-123").exists()
    # Killed between the two renames of a re-save: the old copy is put back.
    os.replace(root / "step-2", root / ".old-step-2-99")
    ckpt.remove_partial_saves(out)
    assert ckpt.latest_checkpoint(out).step == 2


def test_resave_same_step_replaces(tmp_path):
    out = str(tmp_path)
    model = _Tiny()
    ckpt.save_checkpoint(out, 2, transformer=model, state={"step": 2, "tag": 1})
    ckpt.save_checkpoint(out, 2, transformer=model, state={"step": 2, "tag": 2})
    assert ckpt.load_state(ckpt.latest_checkpoint(out))["tag"] == 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-2"]


def test_kill_9_during_a_save_leaves_the_previous_checkpoint(tmp_output_dir):
    """The real CLI, paused inside the step-4 save by the test hook, is SIGKILLed there."""
    out = tmp_output_dir
    proc = popen_cli("train", f"--run.output_dir={out}", "--train.max_steps=4", "--checkpoint.every=2",
                     "--train.log_every=1", "--log.tensorboard=false", "--log.progress=false",
                     "--soar.trajectory_length=2", env={"SOAR_FAST_TEST_SLOW_SAVE": "3"})
    root = out / "checkpoints"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if (root / "step-2").is_dir() and any(p.name.startswith(".tmp-step-4") for p in root.iterdir()):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"trainer exited early:\n{proc.stdout.read()}"
        assert time.time() < deadline, "the step-4 save never started"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = ckpt.latest_checkpoint(str(out))
    assert latest is not None and latest.step == 2
    from diffusers import SD3Transformer2DModel

    SD3Transformer2DModel.from_pretrained(latest.transformer_dir, local_files_only=True)
    assert ckpt.load_state(latest)["step"] == 2
    assert ckpt.resolve_checkpoint(str(out)).step == 2   # what `--resume` picks


def test_prune_never_deletes_the_new_checkpoint_after_resuming_from_an_older_one(tmp_path):
    """A run resumed from step 3 of a folder that also holds step 6 (an abandoned continuation) keeps
    its own newest save; only older checkpoints count against total_limit."""
    out = str(tmp_path)
    model = _Tiny()
    for step in (3, 6):
        ckpt.save_checkpoint(out, step, transformer=model, state={"step": step})
    ckpt.save_checkpoint(out, 4, transformer=model, state={"step": 4}, total_limit=1)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [4, 6]
    ckpt.save_checkpoint(out, 5, transformer=model, state={"step": 5}, total_limit=2)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [4, 5, 6]
