"""LoRA under DDP and FSDP2 on 2 gloo ranks (CPU): one SOAR step on the adapted model equals one process
on the global batch (tests/test_dist_step.py's setup), and the trainer's sharded checkpoints and final
export hold the adapter alone, with the frozen base untouched; the EMA they hold (and `lora_ema/`) is the
adapter's, the recurrence over the adapters of the checkpoints; a one-process run resumes from them.

One spawn of 2 processes (module fixture) runs every multi-rank part."""

from __future__ import annotations

import os

import pytest
import torch

from soar_fast.config import LoraConfig, ParallelConfig
from soar_fast.parallel.env import Dist, single_process
from tests.conftest import FakeSource, run_ranks, tiny_config
from tests.test_dist_step import OPTIM, WORLD, _build_model, _forward_backward, _global_inputs, _shard
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL, assert_close

STRATEGIES = ("ddp", "fsdp2")
TRAIN = ["--lora.rank=4", "--lora.init=gaussian", "--optim.lr=1e-3", "--train.max_steps=2", "--checkpoint.every=1",
         "--ema.decay=0.5"]


def _adapted() -> torch.nn.Module:
    """test_dist_step's model with a random (init false) adapter: the same on every rank and here."""
    from soar_fast.models.lora import apply_lora, lora_info

    model = _build_model()
    return apply_lora(model, lora_info(LoraConfig(rank=4, target_modules=["attention+mlp"], init="false"), model,
                                       init_seed=11))


def _adapter_grads(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        assert (p.grad is None) != p.requires_grad, f"{name}: gradient on a frozen or none on a trained parameter"
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[name.removeprefix("module.")] = g.detach().clone()
    return out


def _step(model, opt, batch, draws, d: Dist):
    from soar_fast.train.trainer import trainable_parameters

    loss, _ = _forward_backward(model, batch, draws, d)
    grads = _adapter_grads(model)
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, grads


def _copied(state: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    return None if state is None else {k: v.clone() for k, v in state.items()}


def _worker(tmp: str) -> None:
    from soar_fast.parallel import apply_data_parallel, fail_fast, init_distributed, shutdown
    from soar_fast.parallel.export import full_state_dict
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer, trainable_parameters

    torch.set_num_threads(1)
    d = init_distributed(ParallelConfig(strategy="fsdp2", timeout_s=60), device_type="cpu")
    with fail_fast(d):
        batch, draws = _shard(*_global_inputs(1), d.rank, d.world)
        results = {}
        for strategy in STRATEGIES:
            model = apply_data_parallel(_adapted(), ParallelConfig(strategy=strategy), d, autocast_bf16=False)
            opt = torch.optim.AdamW(trainable_parameters(model), **OPTIM)
            loss, grads = _step(model, opt, batch, draws, d)
            results[strategy] = {"loss": loss, "grads": grads, "weights": full_state_dict(model, d)}
            # The trainer end to end: sharded checkpoints, the final export (rank 0 data differs by rank).
            out = os.path.join(tmp, f"run-{strategy}")
            trainer = Trainer.build(tiny_config(out, [*TRAIN, f"--parallel.strategy={strategy}"]),
                                    source=FakeSource(seed=d.rank), dist=d)
            before = _copied(full_state_dict(trainer.model, d))  # (without DDP's gather, the live tensors)
            assert fit(trainer) == "done"
            results[f"run-{strategy}"] = {"before": before, "after": full_state_dict(trainer.model, d)}
        # bf16 base + fp32 adapter in one FSDP2 group (mixed dtypes in one all-gather).
        trainer = Trainer.build(tiny_config(os.path.join(tmp, "run-bf16"), [
            *TRAIN, "--parallel.strategy=fsdp2", "--train.mixed_precision=bf16", "--train.max_steps=1"]),
            source=FakeSource(seed=d.rank), dist=d)
        results["bf16"] = {"dtypes": sorted({(p.requires_grad, str(p.dtype)) for p in trainer.model.parameters()}),
                           "status": fit(trainer)}
        if d.is_main:
            torch.save(results, os.path.join(tmp, "results.pt"))
    shutdown(d)


@pytest.fixture(scope="module")
def two_rank_lora(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("lora-dist"))
    return tmp, run_ranks(_worker, WORLD, tmp, timeout_s=240)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_ranks_match_one_process_with_lora(two_rank_lora, strategy):
    from soar_fast.train.trainer import trainable_parameters

    _, results = two_rank_lora
    model = _adapted()
    opt = torch.optim.AdamW(trainable_parameters(model), **OPTIM)
    loss, grads = _step(model, opt, *_global_inputs(1), single_process("cpu"))
    got = results[strategy]
    torch.testing.assert_close(got["loss"], loss, rtol=STEP_LOSS_RTOL, atol=0)
    assert got["grads"].keys() == grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
    want = model.state_dict()
    assert got["weights"].keys() == want.keys()
    for name, w in want.items():
        if ".lora_" in name:
            torch.testing.assert_close(got["weights"][name], w, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
        else:
            assert torch.equal(got["weights"][name], w), f"{name}: the frozen base changed"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharded_checkpoints_and_export_hold_the_adapter_alone(two_rank_lora, strategy):
    from torch.distributed.checkpoint import FileSystemReader

    from soar_fast.models.lora import adapter_state
    from soar_fast.models.lora_io import read_adapter

    tmp, results = two_rank_lora
    out = os.path.join(tmp, f"run-{strategy}")
    run = results[f"run-{strategy}"]
    for name, before in run["before"].items():
        if ".lora_" not in name:
            assert torch.equal(run["after"][name], before), f"{name}: the frozen base changed"
    for step in (1, 2):
        ckpt = os.path.join(out, "checkpoints", f"step-{step}")
        assert sorted(os.listdir(ckpt)) == ["ema", "lora", "state"]
        keys = FileSystemReader(os.path.join(ckpt, "state", "dcp")).read_metadata().state_dict_metadata
        model_keys = [k for k in keys if k.startswith("model.")]
        assert model_keys and all(".lora_" in k for k in keys if not k.startswith("optim.param_groups")), keys
    final = read_adapter(os.path.join(out, "lora"))
    trained = adapter_state(run["after"])
    assert final.keys() == trained.keys()
    for key, value in trained.items():
        assert torch.equal(final[key], value), key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sharded_checkpoints_and_export_hold_the_ema_of_the_adapter(two_rank_lora, strategy):
    """decay 0.5 from the initial adapter A0: EMA1 = lerp(A0, A1, 0.5), EMA2 = lerp(EMA1, A2, 0.5), with A1 and
    A2 the adapters of the checkpoints; `lora_ema/` is EMA2."""
    from soar_fast.models.ema_folder import ema_file, read_ema_meta, read_ema_tensors
    from soar_fast.models.lora import adapter_state, module_key
    from soar_fast.models.lora_io import read_adapter

    tmp, results = two_rank_lora
    out = os.path.join(tmp, f"run-{strategy}")
    ema = adapter_state(results[f"run-{strategy}"]["before"])
    for step in (1, 2):
        ckpt = os.path.join(out, "checkpoints", f"step-{step}")
        adapter = read_adapter(os.path.join(ckpt, "lora"))
        saved = read_ema_tensors(ema_file(ckpt))
        assert sorted(saved) == sorted(module_key(k) for k in adapter)
        assert read_ema_meta(ema_file(ckpt))["updates"] == str(step)
        ema = {k: torch.lerp(v, adapter[k], 0.5) for k, v in ema.items()}
        for key, value in ema.items():
            assert_close(saved[module_key(key)], value, msg=key)
        assert not all(torch.equal(saved[module_key(k)], adapter[k]) for k in ema), "the EMA is the adapter"
    exported = read_adapter(os.path.join(out, "lora_ema"))
    assert exported.keys() == ema.keys()
    for key, value in adapter_state(saved).items():
        assert torch.equal(exported[key], value), key


def test_fsdp2_shards_a_bf16_base_beside_an_fp32_adapter(two_rank_lora):
    tmp, results = two_rank_lora
    assert results["bf16"] == {"dtypes": [(False, "torch.bfloat16"), (True, "torch.float32")], "status": "done"}
    assert os.path.isfile(os.path.join(tmp, "run-bf16", "lora", "pytorch_lora_weights.safetensors"))


def test_one_process_resumes_a_two_rank_lora_checkpoint(two_rank_lora, tmp_path):
    from soar_fast.models.ema_folder import ema_file, read_ema_tensors
    from soar_fast.models.lora import adapter_state
    from soar_fast.models.lora_io import read_adapter
    from soar_fast.train.ema import restore_ema
    from soar_fast.train.loop import fit
    from soar_fast.train.resume import restore_sharded_checkpoint
    from soar_fast.train.trainer import Trainer

    tmp, _ = two_rank_lora
    ckpt = os.path.join(tmp, "run-fsdp2", "checkpoints", "step-1")
    trainer = Trainer.build(tiny_config(tmp_path, TRAIN), source=FakeSource())
    restore_sharded_checkpoint(trainer, ckpt)
    assert trainer.step == 1
    saved = read_adapter(os.path.join(ckpt, "lora"))
    for key, value in adapter_state(trainer.model).items():
        assert torch.equal(value, saved[key]), key
    restore_ema(trainer.ema, ckpt, step=trainer.step)
    saved_ema = read_ema_tensors(ema_file(ckpt))
    assert trainer.ema.updates == 1
    for name, s in zip(trainer.ema.names, trainer.ema.shadow):
        assert torch.equal(s, saved_ema[name]), name
    assert fit(trainer) == "done" and trainer.step == 2


def test_a_one_process_lora_checkpoint_resumes_under_ddp(tmp_path):
    """restore_full_checkpoint: adapter + its optimizer state (and the EMA) into a (one-rank) DDP trainer."""
    from soar_fast.models.ema_folder import ema_file, read_ema_tensors
    from soar_fast.parallel import init_distributed, shutdown
    from soar_fast.train.ema import restore_ema
    from soar_fast.train.loop import fit
    from soar_fast.train.resume import restore_full_checkpoint
    from soar_fast.train.trainer import Trainer
    from tests.test_resume import _records

    plain = tmp_path / "plain"
    fit(Trainer.build(tiny_config(plain, TRAIN), source=FakeSource()))
    saved_env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    try:
        d = init_distributed(ParallelConfig(strategy="ddp", timeout_s=60), device_type="cpu")
        try:
            resumed = tmp_path / "ddp"
            trainer = Trainer.build(tiny_config(resumed, [*TRAIN, "--parallel.strategy=ddp"]), source=FakeSource(),
                                    dist=d)
            restore_full_checkpoint(trainer, str(plain / "checkpoints" / "step-1"))
            restore_ema(trainer.ema, str(plain / "checkpoints" / "step-1"), step=trainer.step)
            assert trainer.step == 1 and trainer.ema.updates == 1
            fit(trainer)
        finally:
            shutdown(d)
    finally:
        os.environ.update(saved_env)
    want, got = _records(plain)[2], _records(resumed)[2]
    for key in ("loss", "loss_main", "loss_aux"):
        torch.testing.assert_close(got[key], want[key], rtol=STEP_LOSS_RTOL, atol=0, msg=key)
    want_ema = read_ema_tensors(ema_file(str(plain / "checkpoints" / "step-2")))
    got_ema = read_ema_tensors(ema_file(str(resumed / "checkpoints" / "step-2")))
    assert got_ema.keys() == want_ema.keys()
    for name, value in want_ema.items():
        torch.testing.assert_close(got_ema[name], value, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
