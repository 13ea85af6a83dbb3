"""LoRA checkpoints, resume and exports: resume is exact (bit for bit on CPU), the exported adapter loads
with diffusers' `StableDiffusion3Pipeline.load_lora_weights` and gives the trained model's outputs, and
`soar-fast export --merge` writes a plain transformer folder with the same outputs; sampling takes the
adapter too. Training runs on the tiny preset folder (`soar-fast preset export tiny`) as `model.path`."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import FakeSource, tiny_config
from tests.test_resume import _records, _same_losses
from tests.tolerances import assert_close

# The tiny folder's widths: 16 latent channels, joint and pooled embeddings 64 wide.
SOURCE = {"channels": 16, "dim": 64, "pooled_dim": 64, "seq": 7}
# lr 1e-3 and random A and B (init false): the adapter moves the outputs far beyond the tolerances.
LORA = ["--lora.rank=4", "--lora.alpha=8", "--lora.target_modules=attention+mlp", "--optim.lr=1e-3"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from soar_fast.models.export import export_tiny_pipeline

    return export_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd3")


def train(out, folder, extra: list[str]):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    cfg = tiny_config(out, [f"--model.path={folder}", *LORA, "--train.max_steps=2", "--checkpoint.every=1", *extra])
    trainer = Trainer.build(cfg, source=FakeSource(**SOURCE))
    assert fit(trainer) == "done"
    return trainer.model.eval()


def inputs():
    g = torch.Generator().manual_seed(3)
    return {"hidden_states": torch.randn(2, 16, 8, 6, generator=g), "timestep": torch.tensor([870.0, 130.0]),
            "encoder_hidden_states": torch.randn(2, 5, 64, generator=g),
            "pooled_projections": torch.randn(2, 64, generator=g)}


@torch.no_grad()
def output(model) -> torch.Tensor:
    return model(**inputs(), return_dict=False)[0]


def load_pipeline_with(folder, adapter):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.load_lora_weights(str(adapter))
    return pipe


@pytest.fixture(scope="module")
def run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    model = train(out, tiny_folder, ["--lora.init=false"])
    return out, model


def test_checkpoints_and_the_export_hold_the_adapter_alone(run, tiny_folder):
    from safetensors import safe_open

    out, _ = run
    for folder in (out / "checkpoints" / "step-1" / "lora", out / "checkpoints" / "step-2" / "lora", out / "lora"):
        assert sorted(p.name for p in folder.iterdir()) == ["pytorch_lora_weights.safetensors", "soar_lora.json"]
        with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as f:
            keys = list(f.keys())
            meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
        assert (meta["transformer.r"], meta["transformer.lora_alpha"]) == (4, 8.0)
    assert not (out / "transformer").exists() and not (out / "checkpoints" / "step-2" / "transformer").exists()
    info = json.loads((out / "lora" / "soar_lora.json").read_text())
    assert info["base"]["path"] == str(tiny_folder) and info["relative_to"] == "base"


def test_the_export_loads_with_diffusers_load_lora_weights(run, tiny_folder):
    from diffusers import SD3Transformer2DModel

    out, model = run
    want = output(model)
    base = output(SD3Transformer2DModel.from_pretrained(tiny_folder / "transformer"))
    assert (want - base).abs().max() > 1e-2, "the adapter must change the output for this test to mean anything"
    pipe = load_pipeline_with(tiny_folder, out / "lora")
    assert_close(output(pipe.transformer.eval()), want)
    # A checkpoint's adapter folder is the same format.
    pipe = load_pipeline_with(tiny_folder, out / "checkpoints" / "step-2" / "lora")
    assert_close(output(pipe.transformer.eval()), want)


def test_export_merge_writes_a_plain_transformer_with_the_same_outputs(run, tmp_path):
    from diffusers import SD3Transformer2DModel

    from soar_fast import cli

    out, model = run
    assert cli.main(["export", "--merge", str(out), str(tmp_path / "merged")]) == 0
    merged = SD3Transformer2DModel.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert_close(output(merged), output(model))
    # From a checkpoint, and without --merge: an adapter folder again (a new OUT each time).
    assert cli.main(["export", str(out / "checkpoints" / "step-2"), str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert cli.main(["export", str(out), str(tmp_path / "merged")]) == 2


def test_sampling_applies_the_adapter(run, tiny_folder):
    from soar_fast.config import EvalConfig, ModelConfig
    from soar_fast.eval.pipeline import load_pipeline

    out, model = run
    eval_cfg = EvalConfig(checkpoint=str(out / "lora"), dtype="float32", resolution=32, max_sequence_length=8)
    pipe = load_pipeline(ModelConfig(path=str(tiny_folder)), eval_cfg, torch.device("cpu"))
    assert_close(output(pipe.transformer), output(model))


def test_pissa_export_is_a_delta_on_the_original_base(tiny_folder, tmp_path):
    """PiSSA trains on a residual base; the export (rank 2r) applies to the untouched base in diffusers."""
    from safetensors import safe_open

    out = tmp_path / "run"
    model = train(out, tiny_folder, ["--lora.init=pissa", "--lora.target_modules=attention"])
    ckpt = json.loads((out / "checkpoints" / "step-2" / "lora" / "soar_lora.json").read_text())
    assert ckpt["relative_to"] == "residual"
    with safe_open(out / "lora" / "pytorch_lora_weights.safetensors", "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.r"] == 8
    pipe = load_pipeline_with(tiny_folder, out / "lora")
    assert_close(output(pipe.transformer.eval()), output(model))
    # `soar-fast export` from the residual checkpoint converts it the same way; --merge needs no conversion.
    from diffusers import SD3Transformer2DModel

    from soar_fast import cli

    assert cli.main(["export", str(out / "checkpoints" / "step-2"), str(tmp_path / "converted")]) == 0
    assert_close(output(load_pipeline_with(tiny_folder, tmp_path / "converted").transformer.eval()), output(model))
    assert cli.main(["export", "--merge", str(out / "checkpoints" / "step-2"), str(tmp_path / "merged")]) == 0
    assert_close(output(SD3Transformer2DModel.from_pretrained(tmp_path / "merged")), output(model))


@pytest.mark.parametrize("extra", [["--lora.dropout=0.2", "--soar.num_rollout_paths=2"],
                                   ["--train.mixed_precision=bf16", "--lora.init=gaussian"]],
                         ids=["fp32-dropout", "bf16-base"])
def test_resume_is_exact(tmp_path, extra):
    from soar_fast.train.checkpoint import latest_checkpoint, load_state, load_weights
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    overrides = ["--lora.rank=4", "--optim.lr=1e-3", "--train.max_steps=4", *extra]
    full, part = tmp_path / "full", tmp_path / "part"
    a = Trainer.build(tiny_config(full, overrides), source=FakeSource())
    fit(a)
    fit(Trainer.build(tiny_config(part, [*overrides, "--train.max_steps=2"]), source=FakeSource()))
    c = Trainer.build(tiny_config(part, overrides), source=FakeSource())
    ckpt = latest_checkpoint(str(part))
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    assert c.step == 2 and len(load_state(ckpt)["optimizer"]["state"]) == len(c.params)
    fit(c)
    ra, rc = _records(full), _records(part)
    assert sorted(rc) == [1, 2, 3, 4]
    _same_losses(ra, rc, [3, 4])
    for (name, p), q in zip(a.model.named_parameters(), c.model.parameters()):
        assert torch.equal(p, q), name


def test_a_full_checkpoint_does_not_resume_a_lora_run(tmp_path):
    from soar_fast.models.folder import ModelFolderError
    from soar_fast.train.checkpoint import latest_checkpoint, load_weights
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    fit(Trainer.build(tiny_config(tmp_path, ["--train.max_steps=2"]), source=FakeSource()))
    lora = Trainer.build(tiny_config(tmp_path, ["--lora.rank=4"]), source=FakeSource())
    with pytest.raises(ModelFolderError, match="lora.rank"):
        load_weights(lora.model, latest_checkpoint(str(tmp_path)))
