"""LoRA (`[lora]`, peft on the diffusers transformer): target names, what trains and in which dtype, and
the SOAR step on the adapted model against the eager objective (the fast step's oracle of
tests/test_fast_step.py) with the `[accel]` switches that run on a CPU, compile and float8 included."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from soar_fast.config import AccelConfig, LoraConfig
from soar_fast.config_io import ConfigError
from soar_fast.models.lora import ATTENTION, MLP, apply_lora, lora_info, resolve_targets
from tests.conftest import FakeSource, tiny_config
from tests.test_fast_step import ALL_CPU, ALL_OFF, fast, oracle, tiny_model
from tests.tolerances import STEP_GRAD, STEP_LOSS_RTOL


def adapted(init: str = "false", rank: int = 4, targets: tuple[str, ...] = ("attention+mlp",)) -> torch.nn.Module:
    """The test_fast_step tiny model with an adapter; init "false" draws A and B at random, so the
    adapter changes the output and both of its matrices get gradients from the first step."""
    model = tiny_model()
    info = lora_info(LoraConfig(rank=rank, target_modules=list(targets), init=init), model, init_seed=5)
    return apply_lora(model, info)


# ----------------------------------------------------------------------------------------- targets

def test_a_bad_target_name_is_a_config_error_listing_the_linear_layers():
    with pytest.raises(ConfigError) as err:
        adapted(targets=("attention", "to_qq", "ff.net.9"))
    msg = str(err.value)
    assert msg.startswith("lora.target_modules: 'to_qq', 'ff.net.9' match no Linear layer")
    listed = msg.split("its Linear layers are: ")[1].split(" (or a preset")[0].split(", ")
    # Leaf names with the block index dropped, each once.
    assert len(listed) == len(set(listed))
    assert {"attn.to_q", "attn2.to_out.0", "ff_context.net.2", "norm1.linear", "proj_out"} <= set(listed)
    assert not any(name.startswith("transformer_blocks") for name in listed)


def test_the_train_command_refuses_a_bad_target_before_building_anything(tmp_path):
    from soar_fast import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--lora.rank=4", "--lora.target_modules=attn.to_qq", f"--run.output_dir={out}"]) == 2
    assert not out.exists()


def test_presets_expand_and_tolerate_layers_an_architecture_lacks():
    assert resolve_targets(["attention+mlp", "attn.to_q", "mlp", "to_q"]) == [*ATTENTION, *MLP, "to_q"]
    model = adapted(targets=("attention",))
    wrapped = {n.rsplit(".", 1)[0] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    # The last (context_pre_only) block has no to_add_out; the dual-attention `attn2` is not in the preset
    # (diffusers' SD3 script's list), but a bare name matches it.
    assert "transformer_blocks.0.attn.to_add_out" in wrapped and "transformer_blocks.1.attn.to_add_out" not in wrapped
    assert "transformer_blocks.0.attn.to_q" in wrapped and not any(".attn2." in n for n in wrapped)
    assert not any(".ff." in n for n in wrapped)
    bare = adapted(targets=("to_q",))
    assert {n for n, _ in bare.named_modules() if n.endswith("to_q.lora_A")} == {
        "transformer_blocks.0.attn.to_q.lora_A", "transformer_blocks.0.attn2.to_q.lora_A",
        "transformer_blocks.1.attn.to_q.lora_A"}
    assert model.soar_lora.target_modules == list(ATTENTION)


# ----------------------------------------------------------------------------------------- training

def _params(trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    base, adapter = {}, {}
    for name, p in trainer.model.named_parameters():
        (adapter if p.requires_grad else base)[name] = p.detach().clone()
    return base, adapter


@pytest.mark.parametrize("objective", ["soar", "sft"])
def test_only_the_adapter_trains_and_the_base_stays_bit_identical(tmp_path, objective):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    cfg = tiny_config(tmp_path, ["--lora.rank=4", "--lora.init=gaussian", "--train.max_steps=3",
                                 "--checkpoint.every=0", "--optim.lr=1e-3", f"--soar.objective={objective}"])
    trainer = Trainer.build(cfg, source=FakeSource())
    base, adapter = _params(trainer)
    assert adapter and all(".lora_A." in n or ".lora_B." in n for n in adapter)
    # The optimizer and the clip see exactly the adapter's parameters.
    optimized = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in optimized] == [id(p) for p in trainer.params]
    assert {id(p) for p in trainer.params} == {id(p) for p in trainer.model.parameters() if p.requires_grad}
    fit(trainer)
    after_base, after_adapter = _params(trainer)
    for name, value in base.items():
        assert torch.equal(after_base[name], value), name
    moved = [n for n, v in adapter.items() if not torch.equal(after_adapter[n], v)]
    # Every B moved (gaussian init: B starts at 0); the last block's context queries feed nothing.
    assert all(n in moved for n in adapter if ".lora_B." in n and "blocks.1.attn.add_q_proj" not in n)


def test_bf16_training_stores_the_frozen_base_in_bf16_and_the_adapter_in_fp32(tmp_path):
    from soar_fast.train.trainer import Trainer

    cfg = tiny_config(tmp_path, ["--lora.rank=4", "--train.mixed_precision=bf16"])
    trainer = Trainer.build(cfg, source=FakeSource())
    dtypes = {(p.requires_grad, p.dtype) for p in trainer.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    result = trainer.train_step()
    trainer.apply_update()
    assert torch.isfinite(result.loss) and torch.isfinite(result.grad_norm)
    assert all(p.dtype == torch.float32 for p in trainer.params)


# ----------------------------------------------------------------------------------------- the step

def check_lora_step(accel: AccelConfig, paths: int = 1, targets: tuple[str, ...] = ("attention+mlp",)) -> torch.nn.Module:
    base = adapted(targets=targets)
    model = copy.deepcopy(base)
    loss_ref, grads_ref = oracle(base, paths)
    loss, grads = fast(model, accel, paths)
    torch.testing.assert_close(loss, loss_ref, rtol=STEP_LOSS_RTOL, atol=0.0)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads_ref.items():
        if ".lora_" not in name:
            assert g is None and grads[name] is None, f"{name}: a frozen base parameter got a gradient"
            continue
        torch.testing.assert_close(grads[name], g, rtol=STEP_GRAD[0], atol=STEP_GRAD[1], msg=name)
    return model


@pytest.mark.parametrize("name, changes, paths", [
    ("all_off", {}, 1),
    ("all_cpu_switches", ALL_CPU, 2),
    ("ckpt_full", {"grad_checkpointing": "full"}, 1),
    ("fuse_main_into_aux", {"rollout_reuse_cond": False, "batched_aux": True, "fuse_main_into_aux": True}, 1),
])
def test_lora_step_matches_the_eager_objective_on_the_adapted_model(name, changes, paths):
    check_lora_step(dataclasses.replace(ALL_OFF, **changes), paths=paths)


def test_lora_step_in_reference_mode():
    check_lora_step(AccelConfig(mode="reference"))


def test_lora_step_compiled(monkeypatch):
    # peft's LoRA Linear traces into the per-block fullgraph compile (aot_eager: the wiring, in seconds).
    import soar_fast.accel.compile as compile_mod

    torch._dynamo.reset()
    monkeypatch.setattr(compile_mod, "DEFAULT_BACKEND", "aot_eager")
    # Serial aux forwards: the main and aux forwards share one shape, the rollout has the other (fewest graphs).
    check_lora_step(dataclasses.replace(ALL_OFF, compile=True), targets=("to_q", "ff.net.2"))


def test_float8_converts_the_frozen_base_and_keeps_the_lora_branches(monkeypatch):
    """accel.float8 with LoRA: the base Linears become Float8Linear (frozen), lora_A/lora_B stay Linear
    in the compute dtype, and the step's gradients reach the adapter only. torch's CPU float8 matmul
    stands in for the sm_89+ GPU the switch otherwise requires."""
    from torchao.float8.float8_linear import Float8Linear

    import soar_fast.accel.float8 as float8_mod

    monkeypatch.setattr(float8_mod, "check_float8_supported", lambda device: None)
    model = adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    float8_mod.apply_float8(model, "tensorwise", "cpu", min_features=32)
    kinds = {n: type(m) for n, m in model.named_modules()}
    assert kinds["transformer_blocks.0.attn.to_q.base_layer"] is Float8Linear
    assert kinds["transformer_blocks.0.attn.to_q.lora_A.default"] is torch.nn.Linear
    assert not any(k is Float8Linear and ".lora_" in n for n, k in kinds.items())
    loss, grads = fast(model, ALL_OFF, paths=1)
    assert torch.isfinite(loss)
    trained = {n for n, g in grads.items() if g is not None}
    assert trained and all(".lora_" in n for n in trained)
    assert all(torch.isfinite(grads[n]).all() for n in trained)
    for name, p in model.named_parameters():  # no update ran: the step itself leaves every weight alone
        assert torch.equal(p, before[name]), name
