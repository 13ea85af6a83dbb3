"""`soar-fast preset export tiny-clip DIR`: a tiny random CLIP model + processor (+ an aesthetic MLP).

Usable as the weights of every CLIP-based scorer (`eval.weights.clipscore`, `.pickscore`, `.aesthetic`
= DIR) to try the evaluation pipeline offline and in tests. The scores are meaningless numbers from
random weights; the files have the layout of the real ones. The tokenizer is the locally built
byte-level CLIP BPE of `models.text` (no downloads).
"""

from __future__ import annotations

import os

import torch

from soar_fast.eval.scorers.aesthetic import MLP_FILE, AestheticMLP

TINY_CLIP_SEED = 0
IMAGE_SIZE = 32


def build_tiny_clip(seed: int = TINY_CLIP_SEED):
    """(CLIPModel, CLIPProcessor): 2 layers, width 32, projection 16, 32 px images, patch 8."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from soar_fast.models.text import build_tiny_clip_tokenizer

    tok = build_tiny_clip_tokenizer()
    common = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 16}
    text = dict(common, vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(common, image_size=IMAGE_SIZE, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        mlp = AestheticMLP(model.config.projection_dim)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tok), mlp


def export_tiny_clip(directory: str) -> str:
    """Write the tiny CLIP (config.json, model.safetensors, tokenizer and processor files) and
    `sac+logos+ava1-l14-linearMSE.pth` (an aesthetic MLP for its 16-d embeddings) to `directory`."""
    model, processor, mlp = build_tiny_clip()
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    torch.save(mlp.state_dict(), os.path.join(directory, MLP_FILE))
    return directory
