"""SD3 text encoding (docs/data.md) against diffusers' own `StableDiffusion3Pipeline.encode_prompt`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soar_fast.models.folder import ModelFolderError
from soar_fast.models.text import CLIP_LENGTH, build_tiny_text_encoders, load_text_encoders, tiny_clip_widths
from tests.tolerances import assert_close

PROMPTS = ["a red circle on a blue background", "", "Zebra crossing: 12 unknown wørds, punctuation!"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soar_fast.models.export import export_tiny_pipeline

    return export_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.mark.parametrize("seq", [77, 13])
def test_shapes_and_zero_padding(seq: int) -> None:
    enc = build_tiny_text_encoders(64, 48)
    embeds, pooled = enc.encode(PROMPTS, seq)
    assert embeds.shape == (3, CLIP_LENGTH + seq, 64) and pooled.shape == (3, 48)
    clip_width = sum(tiny_clip_widths(48))
    assert clip_width == 48
    assert torch.count_nonzero(embeds[:, :CLIP_LENGTH, clip_width:]) == 0  # CLIP zero-padded to T5's width
    assert torch.count_nonzero(embeds[:, CLIP_LENGTH:, :]) > 0


def test_tiny_encoders_are_seeded_and_leave_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_tiny_text_encoders(64, 64, seed=3).encode(PROMPTS[:1], 77)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_text_encoders(64, 64, seed=3).encode(PROMPTS[:1], 77)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_matches_diffusers_encode_prompt(tiny_dir: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_dir, local_files_only=True)
    enc = load_text_encoders(tiny_dir)
    for seq in (77, 20):
        with torch.no_grad():
            ref_e, ref_ne, ref_p, ref_np = pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=seq)
        embeds, pooled = enc.encode(PROMPTS, seq)
        assert torch.equal(embeds, ref_e) and torch.equal(pooled, ref_p)
        # The empty-prompt embedding used for CFG is diffusers' negative prompt "" (batch 1 here,
        # batch 3 there: GEMM blocking differs, hence the tolerance).
        null_e, null_p = enc.encode([""], seq)
        assert_close(null_e[0], ref_ne[0])
        assert_close(null_p[0], ref_np[0])


def test_missing_folder_part_is_named(tmp_path: Path) -> None:
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(ModelFolderError, match="text_encoder_2"):
        load_text_encoders(tmp_path)
