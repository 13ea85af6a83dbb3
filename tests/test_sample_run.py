"""Sampling a soar-fast run: a bare `soar-fast sample` after a short demo train samples its latest
checkpoint on held-out demo captions and prints where the grid went; the run's resolution, text length
and model come from its config.toml unless told otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from soar_fast import cli
from soar_fast.config_io import ConfigError, load_config
from soar_fast.eval.from_run import HELD_OUT_PROMPTS, find_run, sampling_config

QUIET = ["--log.progress=false", "--log.tensorboard=false", "--log.plot=false"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`soar-fast train` of the demo, in a fresh working directory, shrunk to 2 steps at 32 px, 8 tokens."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        assert cli.main(["train", "--train.max_steps=2", "--model.resolution=32", "--data.max_sequence_length=8",
                         "--data.demo_size=8", *QUIET]) == 0
    return cwd


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_bare_sample_after_train_writes_a_grid_and_says_where(demo_run, monkeypatch, capsys):
    monkeypatch.chdir(demo_run)
    capsys.readouterr()
    assert cli.main(["sample"]) == 0
    out = capsys.readouterr().out
    grid = Path("runs/soar-demo/sample/step-2/grid.png")
    assert f"(grid: {grid})" in out and grid.is_file()
    index = _lines(grid.parent / "index.jsonl")
    trained = {r["caption_en"] for r in _lines(Path("runs/soar-demo/demo-data/data.jsonl"))}
    prompts = [r["prompt"] for r in index]
    assert len(prompts) == len(set(prompts)) == HELD_OUT_PROMPTS and not set(prompts) & trained
    assert all(p.startswith("a ") and p.endswith(" background") for p in prompts)
    # The run's 32 px, not the 64 px of the defaults; nothing written into the run's own files.
    assert Image.open(grid.parent / index[0]["image_path"]).size == (32, 32)
    assert not Path("runs/soar-demo/images").exists() and not Path("runs/soar-demo/grid.png").exists()


def test_a_run_gives_its_resolution_text_length_and_model_unless_told(demo_run, tmp_path):
    run = demo_run / "runs" / "soar-demo"
    found = find_run(run / "checkpoints" / "step-2")
    assert found is not None and found.folder == run and found.step == 2
    assert find_run(run / "transformer").transformer == str(run / "transformer")
    base = [f"--eval.checkpoint={run}", "--eval.prompt_list=a red circle on a blue background",
            f"--run.output_dir={tmp_path / 'out'}"]
    cfg = sampling_config(load_config(None, base), "sample")
    assert (cfg.eval.resolution, cfg.eval.max_sequence_length) == (32, 8)
    assert cfg.eval.checkpoint == str(run / "checkpoints" / "step-2") and cfg.model.resolution == 32
    assert cfg.run.output_dir == str(tmp_path / "out")  # given elsewhere: used as is
    told = sampling_config(load_config(None, [*base, "--eval.resolution=48", "--eval.max_sequence_length=5",
                                              "--model.vae=tiny"]), "sample")
    assert (told.eval.resolution, told.eval.max_sequence_length, told.model.vae) == (48, 5, "tiny")
    # Not a run: the config's own training values.
    plain = sampling_config(load_config(None, ["--eval.prompt_list=a cat", f"--run.output_dir={tmp_path / 'x'}"]),
                            "sample")
    assert (plain.eval.resolution, plain.eval.max_sequence_length, plain.eval.checkpoint) == (64, 77, None)
    with pytest.raises(ConfigError, match="no prompts"):
        sampling_config(load_config(None, [f"--run.output_dir={tmp_path / 'y'}"]), "sample")


def test_bare_eval_samples_the_run_into_its_own_folder(demo_run, monkeypatch, capsys):
    monkeypatch.chdir(demo_run)
    capsys.readouterr()
    assert cli.main(["eval", "--eval.steps=2"]) == 0
    out = Path("runs/soar-demo/eval/step-2")
    assert f"eval -> {out}" in capsys.readouterr().out
    results = _lines(out / "evaluation_results.jsonl")
    assert len(results) == HELD_OUT_PROMPTS and (out / "grid.png").is_file()
    assert json.loads((out / "average_scores.json").read_text())["run"]["resolution"] == 32


def test_a_run_without_a_checkpoint_is_named(demo_run, tmp_path):
    empty = tmp_path / "empty-run"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "config.toml").write_text((demo_run / "runs" / "soar-demo" / "config.toml").read_text())
    for args, key in (([f"--eval.checkpoint={empty}", f"--run.output_dir={tmp_path / 'o'}"], "eval.checkpoint"),
                      ([f"--run.output_dir={empty}"], "run.output_dir")):
        with pytest.raises(ConfigError, match=f"{key}={empty}.* no complete checkpoint"):
            sampling_config(load_config(None, args), "sample")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo as a LoRA run with an EMA (random A and B: the adapter changes the outputs), 2 steps."""
    out = tmp_path_factory.mktemp("lora") / "run"
    assert cli.main(["train", "--train.max_steps=2", "--model.resolution=32", "--data.max_sequence_length=8",
                     "--data.demo_size=8", "--lora.rank=4", "--lora.init=false", "--ema.decay=0.5",
                     "--optim.lr=1e-3", f"--run.output_dir={out}", *QUIET]) == 0
    return out


def test_sampling_a_lora_run_finds_its_base_and_adapter(lora_run, capsys):
    import torch

    from soar_fast.eval.pipeline import load_pipeline
    from soar_fast.models.ema_folder import lay_over, read_ema_tensors
    from soar_fast.models.lora_io import adapted_transformer, merged_transformer, read_info, rebuild_base

    ckpt = lora_run / "checkpoints" / "step-2"
    for path, want in ((lora_run, ckpt), (lora_run / "lora", lora_run / "lora"), (ckpt, ckpt)):
        found = find_run(path)
        assert found is not None and found.folder == lora_run and found.transformer == str(want), path
    capsys.readouterr()
    assert cli.main(["sample", f"--run.output_dir={lora_run}"]) == 0
    assert "sample/step-2 (grid:" in capsys.readouterr().out and (lora_run / "sample" / "step-2" / "grid.png").is_file()
    assert cli.main(["sample", f"--run.output_dir={lora_run}", "--eval.use_ema=true"]) == 0
    assert (lora_run / "sample" / "step-2-ema" / "grid.png").is_file()  # beside the weights' images
    # What sampling runs: the run's recorded base with the adapter (or its EMA) merged in.
    plain = merged_transformer(adapted_transformer(str(ckpt / "lora")))
    averaged = adapted_transformer(str(ckpt / "lora"))
    lay_over(averaged, read_ema_tensors(str(ckpt / "ema" / "ema.safetensors")), source="ema")
    averaged = merged_transformer(averaged)
    info, _ = read_info(str(ckpt / "lora"))
    base = rebuild_base(info)  # the preset, seed and data widths the run recorded
    for use_ema, want in ((False, plain), (True, averaged)):
        cfg = sampling_config(load_config(None, [f"--run.output_dir={lora_run}", "--eval.dtype=float32",
                                                 f"--eval.use_ema={str(use_ema).lower()}"]), "sample")
        got = load_pipeline(cfg.model, cfg.eval, torch.device("cpu")).transformer.state_dict()
        assert got.keys() == want.state_dict().keys() == base.state_dict().keys()
        for name, value in want.state_dict().items():
            assert torch.equal(got[name], value), (use_ema, name)
    # The adapter moved the adapted Linears of the base alone; the EMA differs from the adapter.
    moved = [n for n, v in base.state_dict().items() if not torch.equal(v, plain.state_dict()[n])]
    assert moved and all(n.removesuffix(".weight").endswith(tuple(info.target_modules)) for n in moved), moved
    assert any(not torch.equal(v, averaged.state_dict()[n]) for n, v in plain.state_dict().items())
