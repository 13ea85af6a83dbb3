"""Transformer presets, seeded init, local folders and their error messages."""

from __future__ import annotations

import json

import pytest
import torch

from soar_fast.config import ModelConfig
from soar_fast.models.transformer import (
    ModelFolderError,
    build_transformer,
    count_parameters,
    image_tokens,
    load_transformer,
    preset_config,
    scheduler_config,
    text_tokens,
    velocity_fn,
)


def tiny(**dims):
    return build_transformer(ModelConfig(preset="tiny"), seed=0, **dims)


def test_sd35m_is_the_sd35_medium_architecture():
    cfg = preset_config("sd35m")
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]) == (24, 24, 64)
    assert cfg["dual_attention_layers"] == tuple(range(13)) and cfg["qk_norm"] == "rms_norm"
    assert (cfg["joint_attention_dim"], cfg["pooled_projection_dim"], cfg["patch_size"]) == (4096, 2048, 2)
    assert cfg["in_channels"] == cfg["out_channels"] == 16 and cfg["caption_projection_dim"] == 24 * 64
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**cfg)
    assert 2.2e9 < count_parameters(model) < 2.3e9


def test_tiny_forward_shape_and_seeded_init():
    state = torch.random.get_rng_state()
    a, b, c = tiny(), tiny(), build_transformer(ModelConfig(), seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "building a preset must not touch the global RNG"
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    f = velocity_fn(a)
    out = f(torch.randn(3, 16, 8, 8), torch.tensor([10.0, 500.0, 999.0]), torch.randn(3, 7, 64), torch.randn(3, 64))
    assert out.shape == (3, 16, 8, 8)
    assert image_tokens(a, (8, 8)) == 16 and text_tokens(torch.zeros(3, 7, 64)) == 7


def test_preset_adapts_to_data_shapes():
    model = tiny(in_channels=4, joint_attention_dim=32, pooled_projection_dim=16)
    assert (model.config.in_channels, model.config.out_channels) == (4, 4)
    out = velocity_fn(model)(torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.randn(2, 5, 32), torch.randn(2, 16))
    assert out.shape == (2, 4, 8, 8)


def test_load_local_folder_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"num_train_timesteps": 1000, "shift": 3.0}))
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):
        loaded = load_transformer(str(path))
        for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
            assert torch.equal(p, q), n
    cfg = ModelConfig(path=str(tmp_path / "pipe"))
    assert scheduler_config(cfg)["shift"] == 3.0
    built = build_transformer(cfg, in_channels=16)
    assert built.config.num_layers == model.config.num_layers
    with pytest.raises(ModelFolderError, match="in_channels=16, but the data gives 4"):
        build_transformer(cfg, in_channels=4)


def test_missing_or_incomplete_folder_names_what_is_missing(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        load_transformer(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no transformer/ subfolder"):
        load_transformer(str(tmp_path / "empty"))
    folder = tmp_path / "pipe" / "transformer"
    tiny().save_pretrained(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="missing weights"):
        load_transformer(str(tmp_path / "pipe"))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="missing weight shard.*00001-of-00002"):
        load_transformer(str(tmp_path / "pipe"))
    with pytest.raises(ModelFolderError, match="missing scheduler/scheduler_config.json"):
        scheduler_config(ModelConfig(path=str(tmp_path / "pipe")))
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    with pytest.raises(ModelFolderError, match="expected SD3Transformer2DModel"):
        load_transformer(str(folder))


def test_sd35l_is_the_sd35_large_architecture():
    cfg = preset_config("sd35l")
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["attention_head_dim"]) == (38, 38, 64)
    assert cfg["dual_attention_layers"] == () and cfg["qk_norm"] == "rms_norm"
    assert (cfg["joint_attention_dim"], cfg["pooled_projection_dim"], cfg["caption_projection_dim"]) == (4096, 2048, 2432)
    assert (cfg["patch_size"], cfg["pos_embed_max_size"], cfg["out_channels"]) == (2, 192, 16)
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**cfg)
    assert 8.0e9 < count_parameters(model) < 8.2e9  # SD3.5-Large: 8.1B
