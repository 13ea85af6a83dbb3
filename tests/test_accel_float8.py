"""accel.float8: refuses CPU clearly; the module filter keeps only large token-wise Linears."""

from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel

from soar_fast.accel.float8 import apply_float8, float8_module_filter


def test_cpu_refused_with_key_name():
    model = torch.nn.Linear(32, 32)
    with pytest.raises(RuntimeError, match="accel.float8"):
        apply_float8(model, "tensorwise", "cpu")


def test_filter_on_sd3_structure():
    model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16,
                                  num_attention_heads=2, joint_attention_dim=48, caption_projection_dim=32,
                                  pooled_projection_dim=40, out_channels=16, pos_embed_max_size=8,
                                  dual_attention_layers=(0,))
    keep = float8_module_filter(min_features=32)
    chosen = {name for name, m in model.named_modules() if keep(m, name)}
    assert "transformer_blocks.0.attn.to_q" in chosen
    assert "transformer_blocks.0.attn2.to_k" in chosen
    assert "transformer_blocks.0.ff.net.0.proj" in chosen
    assert "transformer_blocks.0.ff_context.net.2" in chosen
    assert "context_embedder" in chosen
    for name in chosen:
        assert not any(s in name for s in ("norm1", "norm_out", "time_text_embed", "proj_out")), name
    # Narrow layers stay out: proj_out (p²·C = 64 ≥ 32 but skipped by name) and anything under min_features.
    assert not any(keep(m, n) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                   and min(m.in_features, m.out_features) < 32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs an sm_89+ GPU")
def test_convert_on_gpu():  # pragma: no cover - GPU only
    pytest.importorskip("torchao", reason="float8 training needs torchao (not in every GPU image)")
    from torchao.float8.float8_linear import Float8Linear

    model = torch.nn.Sequential()
    model.add_module("attn", torch.nn.Linear(1024, 1024))
    model.to("cuda")
    assert "1 Linear" in apply_float8(model, "tensorwise", "cuda")
    assert isinstance(model.attn, Float8Linear)
