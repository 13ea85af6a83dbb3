"""CLIPScore: cosine similarity of CLIP ViT-L/14 image and prompt embeddings (~0.28–0.30 for SD3.5-M).

The reference divides `logits_per_image` by 100, which is the cosine because CLIP-L's learned logit
scale sits at its clamp of 100; we compute the cosine directly, so any CLIP (also `tiny-clip`) gives a
cosine. Weights: `eval.weights.clipscore` = a local `openai/clip-vit-large-patch14` folder.
"""

from __future__ import annotations

from soar_fast.eval.scorers._clip import ClipSimilarity


class ClipScore(ClipSimilarity):
    name = "clipscore"
    keys = ("clipscore",)
    what = "a local CLIP ViT-L/14 folder (huggingface.co/openai/clip-vit-large-patch14)"
    tensor_pixels = True
