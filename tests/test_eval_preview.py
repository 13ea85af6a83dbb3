"""Training previews: a fixed grid per step, to PNG and TensorBoard, the module's mode restored."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from soar_fast.config_io import load_config
from soar_fast.eval.preview import build_preview, render_preview
from soar_fast.models.transformer import build_transformer


class FakeWriter:
    def __init__(self) -> None:
        self.images: list[tuple[str, np.ndarray, int]] = []

    def add_image(self, tag, img, step, dataformats):
        assert dataformats == "HWC"
        self.images.append((tag, img, step))


def test_preview_grid_is_fixed_and_logged(tmp_path):
    cfg = load_config(None, ["--model.resolution=32", "--eval.preview_steps=2", "--data.max_sequence_length=8",
                             "--eval.preview_prompts=a cat,a dog,a red circle"])
    preview = build_preview(cfg, "cpu")
    transformer = build_transformer(cfg.model).train()
    writer = FakeWriter()
    path = render_preview(transformer, preview, step=5, output_dir=str(tmp_path), writer=writer)
    assert path == str(tmp_path / "samples" / "step-0000005.png")
    grid = np.asarray(Image.open(path))
    assert grid.shape == (32, 3 * 32 + 2 * 2, 3)  # one row: three 32 px images, 2 px gaps
    assert writer.images[0][0] == "samples" and writer.images[0][2] == 5
    assert transformer.training and all(p.grad is None for p in transformer.parameters())
    again = render_preview(transformer, preview, step=6, output_dir=str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(again)), grid)  # same weights, same seeds: same grid
    assert render_preview(transformer, preview, step=7, output_dir=str(tmp_path), write=False) is None
    # Random noise on every weight: a constant shift of one tensor can be normalised away (LayerNorm).
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    assert not np.array_equal(np.asarray(Image.open(render_preview(transformer, preview, step=8,
                                                                   output_dir=str(tmp_path)))), grid)


def test_ema_preview_is_its_own_grid_and_tag(tmp_path):
    """`eval.preview_ema`: the grid rendered with the EMA swapped in goes to step-N-ema.png / `samples_ema`;
    the live grid after it is the live weights' again."""
    from soar_fast.config import EmaConfig
    from soar_fast.train.ema import build_ema

    cfg = load_config(None, ["--model.resolution=32", "--eval.preview_steps=2", "--data.max_sequence_length=8",
                             "--eval.preview_prompts=a cat,a dog"])
    preview = build_preview(cfg, "cpu")
    transformer = build_transformer(cfg.model).train()
    ema = build_ema(EmaConfig(decay=0.5), transformer, torch.optim.SGD(transformer.parameters(), lr=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    ema.after_step(1)
    writer = FakeWriter()
    live = render_preview(transformer, preview, step=3, output_dir=str(tmp_path), writer=writer)
    with ema.swapped_in():
        averaged = render_preview(transformer, preview, step=3, output_dir=str(tmp_path), writer=writer, suffix="-ema")
    assert averaged == str(tmp_path / "samples" / "step-0000003-ema.png")
    assert [tag for tag, _, _ in writer.images] == ["samples", "samples_ema"]
    assert not np.array_equal(np.asarray(Image.open(live)), np.asarray(Image.open(averaged)))
    again = render_preview(transformer, preview, step=4, output_dir=str(tmp_path))
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(live)))
