"""LoRA with an EMA: the EMA is the adapter's (the optimizer's parameters alone); resume is exact (losses and
EMA bit for bit); the final `lora_ema/` and `soar-fast export --ema` load with diffusers' `load_lora_weights`
and give the outputs of the model with the EMA swapped in; sampling with `eval.use_ema` and the training
preview take the EMA adapter. Exports and sampling run on the tiny preset folder as `model.path`."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import FakeSource, tiny_config
from tests.test_lora_io import SOURCE, load_pipeline_with, output
from tests.test_resume import _records, _same_losses
from tests.tolerances import assert_close

# Random A and B (init false) and lr 1e-3: the EMA adapter is far from the live one (decay 0.6 at every step).
LORA_EMA = ["--lora.rank=4", "--lora.alpha=8", "--lora.target_modules=attention+mlp", "--lora.init=false",
            "--optim.lr=1e-3", "--ema.decay=0.6"]


def test_resume_with_lora_and_ema_is_exact(tmp_path):
    """6 steps vs 4 + resume to 6 (EMA updates at 3 and 6, a power warm-up, LoRA dropout): the same losses
    and the same EMA of the adapter, bit for bit."""
    from soar_fast.models.ema_folder import ema_file, read_ema_tensors
    from soar_fast.models.lora import is_adapter_parameter
    from soar_fast.train.checkpoint import latest_checkpoint, load_state, load_weights
    from soar_fast.train.ema import restore_ema
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    overrides = [*LORA_EMA, "--ema.decay=0.8", "--ema.every=3", "--ema.warmup=power", "--lora.dropout=0.1",
                 "--train.max_steps=6"]
    full, part = tmp_path / "full", tmp_path / "part"
    a = Trainer.build(tiny_config(full, overrides), source=FakeSource())
    fit(a)
    assert a.ema.names and all(is_adapter_parameter(n) for n in a.ema.names)
    assert [s.shape for s in a.ema.shadow] == [p.shape for p in a.params]
    fit(Trainer.build(tiny_config(part, [*overrides, "--train.max_steps=4"]), source=FakeSource()))
    c = Trainer.build(tiny_config(part, overrides), source=FakeSource())
    ckpt = latest_checkpoint(str(part))
    assert sorted(read_ema_tensors(ema_file(ckpt.path))) == sorted(a.ema.names)
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    restore_ema(c.ema, ckpt.path, step=c.step)
    assert (c.step, c.ema.updates) == (4, 1)
    fit(c)
    _same_losses(_records(full), _records(part), [5, 6])
    assert a.ema.updates == c.ema.updates == 2
    for name, sa, sc in zip(a.ema.names, a.ema.shadow, c.ema.shadow):
        assert torch.equal(sa, sc), name


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """3 steps on the tiny folder with a checkpoint each step and an EMA preview at step 3."""
    from soar_fast.models.export import export_tiny_pipeline
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("lora-ema")
    folder = export_tiny_pipeline(tmp / "sd3")
    out = tmp / "run"
    previews = ["--log.sample_every=3", "--eval.preview_ema=true", "--eval.preview_steps=1",
                "--eval.preview_prompts=a cat", "--data.max_sequence_length=8", "--model.resolution=32"]
    cfg = tiny_config(out, [f"--model.path={folder}", *LORA_EMA, "--train.max_steps=3", "--checkpoint.every=1",
                            *previews])
    trainer = Trainer.build(cfg, source=FakeSource(**SOURCE))
    assert fit(trainer) == "done"
    model = trainer.model.eval()
    live = output(model)
    with trainer.ema.swapped_in():
        averaged = output(model)
    assert (averaged - live).abs().max() > 1e-2, "the EMA must change the output for these tests to mean anything"
    return folder, out, trainer, live, averaged


def test_the_ema_adapter_export_loads_with_load_lora_weights(run, tmp_path):
    from soar_fast import cli
    from soar_fast.models.lora import adapter_state
    from soar_fast.models.lora_io import read_adapter

    folder, out, trainer, live, averaged = run
    exported = read_adapter(out / "lora_ema")
    want = adapter_state(dict(zip(trainer.ema.names, trainer.ema.shadow)))
    assert exported.keys() == want.keys()
    assert all(torch.equal(exported[k], v) for k, v in want.items())
    assert_close(output(load_pipeline_with(folder, out / "lora_ema").transformer.eval()), averaged)
    assert_close(output(load_pipeline_with(folder, out / "lora").transformer.eval()), live)
    # soar-fast export --ema: from the run (its lora_ema/) and from a checkpoint (ema/ over its lora/).
    assert cli.main(["export", "--ema", str(out), str(tmp_path / "from-run")]) == 0
    assert cli.main(["export", "--ema", str(out / "checkpoints" / "step-3"), str(tmp_path / "from-ckpt")]) == 0
    for name in ("from-run", "from-ckpt"):
        assert_close(output(load_pipeline_with(folder, tmp_path / name).transformer.eval()), averaged)
    assert cli.main(["export", "--ema", "--merge", str(out / "checkpoints" / "step-2"), str(tmp_path / "merged")]) == 0
    from diffusers import SD3Transformer2DModel

    merged = output(SD3Transformer2DModel.from_pretrained(tmp_path / "merged"))
    assert not torch.allclose(merged, averaged, rtol=0, atol=1e-4)  # step 2's EMA, not the final one


def test_sampling_with_eval_use_ema_takes_the_ema_adapter(run):
    from soar_fast.config import EvalConfig, ModelConfig
    from soar_fast.eval.pipeline import load_pipeline

    folder, out, _, live, averaged = run
    model_cfg, cpu = ModelConfig(path=str(folder)), torch.device("cpu")
    sizes = {"resolution": 32, "max_sequence_length": 8, "dtype": "float32"}
    step3 = out / "checkpoints" / "step-3"
    for checkpoint in (step3, step3 / "lora", out, out / "lora", out / "lora_ema"):
        pipe = load_pipeline(model_cfg, EvalConfig(checkpoint=str(checkpoint), use_ema=True, **sizes), cpu)
        assert not any("lora" in n for n, _ in pipe.transformer.named_parameters())
        assert_close(output(pipe.transformer), averaged)
    pipe = load_pipeline(model_cfg, EvalConfig(checkpoint=str(step3), **sizes), cpu)
    assert_close(output(pipe.transformer), live)


def test_the_training_preview_renders_the_ema_adapter(run):
    import numpy as np
    from PIL import Image

    _, out, *_ = run
    grids = [np.asarray(Image.open(out / "samples" / name)) for name in ("step-0000003.png", "step-0000003-ema.png")]
    assert grids[0].shape == grids[1].shape and not np.array_equal(*grids)


def test_a_pissa_ema_adapter_exports_as_a_delta_on_the_original_base(run, tmp_path):
    """PiSSA trains on a residual base: `lora_ema/` (rank 2r) and `eval.use_ema` on its checkpoint both give
    the model with the EMA swapped in, the first through diffusers on the untouched base."""
    from soar_fast.config import EvalConfig, ModelConfig
    from soar_fast.eval.pipeline import load_pipeline
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    folder = run[0]
    out = tmp_path / "pissa"
    cfg = tiny_config(out, [f"--model.path={folder}", *LORA_EMA, "--lora.init=pissa", "--lora.target_modules=attention",
                            "--train.max_steps=2", "--checkpoint.every=2"])
    trainer = Trainer.build(cfg, source=FakeSource(**SOURCE))
    assert fit(trainer) == "done"
    with trainer.ema.swapped_in():
        want = output(trainer.model.eval())
    assert (want - output(trainer.model)).abs().max() > 1e-4
    assert_close(output(load_pipeline_with(folder, out / "lora_ema").transformer.eval()), want)
    eval_cfg = EvalConfig(checkpoint=str(out / "checkpoints" / "step-2"), use_ema=True, resolution=32,
                          max_sequence_length=8, dtype="float32")
    assert_close(output(load_pipeline(ModelConfig(path=str(folder)), eval_cfg, torch.device("cpu")).transformer), want)
