"""`preset export tiny DIR`: a complete diffusers SD3 folder that loads offline and trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soar_fast.models.export import export_tiny_pipeline

    return export_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


def test_layout_and_dims_agree(tiny_dir: Path) -> None:
    index = json.loads((tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    for part in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
                 "tokenizer_2", "tokenizer_3", "scheduler"):
        assert (tiny_dir / part).is_dir(), part
    cfg = lambda sub: json.loads((tiny_dir / sub / "config.json").read_text())
    tr, l, g, t5, vae = cfg("transformer"), cfg("text_encoder"), cfg("text_encoder_2"), cfg("text_encoder_3"), cfg("vae")
    assert t5["d_model"] == tr["joint_attention_dim"]
    assert l["projection_dim"] + g["projection_dim"] == tr["pooled_projection_dim"]
    assert l["hidden_size"] + g["hidden_size"] <= tr["joint_attention_dim"]
    assert vae["latent_channels"] == tr["in_channels"]
    assert l["architectures"] == ["CLIPTextModelWithProjection"] and t5["architectures"] == ["T5EncoderModel"]
    sched = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["shift"] == 3.0 and sched["num_train_timesteps"] == 1000


def test_pipeline_loads_offline_and_samples(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusion3Pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dir, local_files_only=True)
    out = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_training_side_loads_it(tiny_dir: Path) -> None:
    from soar_fast.config import ModelConfig
    from soar_fast.models.transformer import build_transformer, scheduler_config

    model = build_transformer(ModelConfig(path=str(tiny_dir)))
    assert model.config.in_channels == 16
    assert scheduler_config(ModelConfig(path=str(tiny_dir)))["shift"] == 3.0
