"""`soar-fast preset export tiny|toy DIR`: a complete SD3 diffusers folder with tiny random parts.

`tiny`: `StableDiffusion3Pipeline.from_pretrained(DIR)` loads it offline and `model.path = DIR` trains
with it, so tests and users exercise the real loading path (transformer, VAE, CLIP-L/G, T5, tokenizers,
scheduler with shift 3.0) without downloading anything. `toy`: the same folder with the toy autoencoder
as `vae/` (`models/toy_vae.py`), so what `sample` and `eval` decode from it are pictures; soar-fast
loads it (`model.path = DIR`), diffusers' SD3 pipeline does not (its VAE must be an AutoencoderKL).
"""

from __future__ import annotations

import json
from pathlib import Path

from soar_fast.config import ModelConfig

EXPORT_SEED = 0


def export_tiny_pipeline(directory: str | Path) -> Path:
    """Write the tiny pipeline into `directory` (created; existing files are overwritten)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from soar_fast.models.text import build_tiny_text_encoders
    from soar_fast.models.transformer import build_transformer
    from soar_fast.models.vae import build_tiny_vae

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    transformer = build_transformer(ModelConfig(preset="tiny"), seed=EXPORT_SEED)
    cfg = transformer.config
    text = build_tiny_text_encoders(cfg.joint_attention_dim, cfg.pooled_projection_dim, seed=EXPORT_SEED)
    vae = build_tiny_vae(cfg.in_channels, seed=EXPORT_SEED)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                                    text_encoder=text.clip_l, tokenizer=text.tokenizer_l,
                                    text_encoder_2=text.clip_g, tokenizer_2=text.tokenizer_g,
                                    text_encoder_3=text.t5, tokenizer_3=text.tokenizer_t5)
    pipe.save_pretrained(out, safe_serialization=True)
    # The slow-tokenizer files too, so older transformers (4.x CLIPTokenizer) load the folder as well.
    for sub, tok in (("tokenizer", text.tokenizer_l), ("tokenizer_2", text.tokenizer_g)):
        model = json.loads(tok.backend_tokenizer.to_str())["model"]
        (out / sub / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
        merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
        (out / sub / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


def export_toy_pipeline(directory: str | Path) -> Path:
    """The tiny pipeline with the toy autoencoder as `vae/` (model_index.json names it too)."""
    import shutil

    from soar_fast.models.toy_vae import build_toy_autoencoder

    out = export_tiny_pipeline(directory)
    shutil.rmtree(out / "vae")
    build_toy_autoencoder().save_pretrained(out / "vae")
    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text())
    index["vae"] = ["soar_fast.models.toy_vae", "ToyAutoencoder"]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out
