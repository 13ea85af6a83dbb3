"""The toy autoencoder: lossless round trips under SD3's shift/scaling, its vae/ folder (export, load,
broken folders), and the image-side rule that knows the VAE."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from soar_fast.config_io import ConfigError, load_config
from soar_fast.models.folder import ModelFolderError
from soar_fast.models.presets import model_geometry
from soar_fast.models.toy_vae import ToyAutoencoder, hadamard_embedding
from soar_fast.models.vae import build_vae, decode, encode_posterior, load_vae, scale_factor
from tests.tolerances import assert_close


def _images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_embedding_is_orthonormal_and_exact_in_bf16():
    e = hadamard_embedding()
    assert e.shape == (16, 12)
    assert torch.equal(e.T @ e, torch.eye(12))
    assert torch.equal(e.to(torch.bfloat16).float(), e) and set(e.abs().unique().tolist()) == {0.25}


@pytest.mark.parametrize("h, w", [(38, 22), (2, 14), (30, 6)])
def test_decode_of_encode_is_the_image(h, w):
    vae = build_vae("toy")
    x = _images(3, h, w)
    mean, std = encode_posterior(vae, x)
    assert mean.shape == std.shape == (3, 16, h // 2, w // 2) and scale_factor(vae) == 2
    assert torch.count_nonzero(std) == 0
    # SD3's convention around it: mean' = scaling·(raw − shift), raw = E·unshuffle(x).
    raw = torch.einsum("ij,bjhw->bihw", hadamard_embedding(), torch.nn.functional.pixel_unshuffle(x, 2))
    assert_close(mean, (raw - 0.0609) * 1.5305)
    assert 0.5 < float(mean.std()) < 1.5  # near the unit scale of the noise it is mixed with
    assert_close(decode(vae, mean) * 2 - 1, x)


def test_round_trip_stays_exact_after_a_dtype_move():
    vae = build_vae("toy").to(torch.bfloat16)
    assert vae.embedding.dtype == torch.float32 and vae.dtype == torch.float32
    x = _images(2, 10, 18, seed=3)
    assert_close(decode(vae, encode_posterior(vae, x)[0]) * 2 - 1, x)


def test_decode_projects_a_latent_outside_the_image_subspace():
    vae = build_vae("toy")
    z = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(1))
    e = hadamard_embedding()
    pixels = vae.decode(z).sample
    again = vae.encode(pixels).latent_dist.mean
    assert_close(again, torch.einsum("ij,bjhw->bihw", e @ e.T, z))
    assert not torch.allclose(again, z)  # 4 of the 16 directions carry no image


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soar_fast.models.export import export_toy_pipeline

    return export_toy_pipeline(tmp_path_factory.mktemp("toy-sd3"))


def test_export_and_load_round_trip(toy_dir: Path):
    from soar_fast.config import DataConfig, ModelConfig
    from soar_fast.data.encoders import load_encoders
    from soar_fast.data.model_dims import size_multiple
    from soar_fast.models.folder import check_model_folder

    config = json.loads((toy_dir / "vae" / "config.json").read_text())
    assert config["_class_name"] == "ToyAutoencoder" and config["downsample_factor"] == 2
    assert json.loads((toy_dir / "model_index.json").read_text())["vae"] == ["soar_fast.models.toy_vae",
                                                                             "ToyAutoencoder"]
    check_model_folder(str(toy_dir), encodes=True)
    vae = load_vae(toy_dir)
    assert isinstance(vae, ToyAutoencoder) and torch.equal(vae.embedding, hadamard_embedding())
    assert dict(vae.config) == dict(build_vae("toy").config)
    model = ModelConfig(path=str(toy_dir))
    assert model_geometry(model.preset, model.path).vae_factor == 2 and size_multiple(model) == 4
    enc = load_encoders(model, DataConfig(max_sequence_length=8))
    x = _images(2, 12, 20, seed=5)
    mean, _ = enc.encode_pixels(x)
    assert mean.shape == (2, 16, 6, 10)
    assert_close(decode(enc.vae, mean) * 2 - 1, x)


def _broken(toy_dir: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(toy_dir / "vae", root / "vae")
    edit(root / "vae")
    return root


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("edit, says", [
    (lambda v: _write_json(v / "config.json", {"_class_name": "MysteryVAE"}), "unknown VAE class 'MysteryVAE'"),
    (lambda v: (v / "config.json").write_text("{not json"), "not readable JSON"),
    (lambda v: (v / "diffusion_pytorch_model.safetensors").unlink(), "missing"),
    (lambda v: (v / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage"), "no readable 'embedding'"),
    (lambda v: __import__("safetensors.torch").torch.save_file(
        {"embedding": torch.randn(16, 12, generator=torch.Generator().manual_seed(0))},
        str(v / "diffusion_pytorch_model.safetensors")), "not orthonormal"),
    (lambda v: __import__("safetensors.torch").torch.save_file(
        {"embedding": hadamard_embedding()[:, :8].contiguous()},
        str(v / "diffusion_pytorch_model.safetensors")), "expected (16, 12)"),
    (lambda v: _write_json(v / "config.json", {"_class_name": "AutoencoderKL", "latent_channels": 16}),
     "the AutoencoderKL does not load"),
])
def test_broken_vae_folder_is_a_model_folder_error_naming_the_path(toy_dir, tmp_path, edit, says):
    root = _broken(toy_dir, tmp_path, edit)
    with pytest.raises(ModelFolderError) as err:
        load_vae(root)
    assert says in str(err.value) and str(root / "vae") in str(err.value)


def test_image_side_rule_knows_the_vae(toy_dir: Path):
    assert load_config(None, ["--model.resolution=36"]).model.resolution == 36  # tiny preset: toy, 4 px
    for args, multiple in ((["--model.resolution=38"], 4), (["--model.vae=tiny", "--model.resolution=36"], 16),
                           (["--model.preset=sd35m", "--model.resolution=36"], 16),
                           ([f"--model.path={toy_dir}", "--model.resolution=38"], 4)):
        with pytest.raises(ConfigError) as err:
            load_config(None, args)
        line = str(err.value)
        assert line.startswith("model.resolution = ") and f"a multiple of {multiple} (VAE factor" in line, line
    assert load_config(None, [f"--model.path={toy_dir}", "--model.resolution=36"]).model.resolution == 36
    assert "toy VAE" in model_geometry("tiny", None).source and model_geometry("sd35m", None).vae_factor == 8
