"""CLIPScore: cosine similarity of CLIP ViT-L/14 image and prompt embeddings (~0.28–0.30 for SD3.5-M).

The reference divides `logits_per_image` by 100, which is the cosine because CLIP-L's learned logit
scale sits at its clamp of 100; we compute the cosine directly, so any CLIP (also `tiny-clip`) gives a
cosine. Weights: `eval.weights.clipscore` = a local `openai/clip-vit-large-patch14` folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import Scorer, weight_path
from soar_fast.eval.scorers._clip import image_features, load_clip, pixels_via_tensor, text_features, tokenize


class ClipScore(Scorer):
    name = "clipscore"
    keys = ("clipscore",)

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model, self.processor, self.device = model, processor, device

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> ClipScore:
        path = weight_path(cfg, "clipscore", cls.name, "a local CLIP ViT-L/14 folder "
                           "(huggingface.co/openai/clip-vit-large-patch14)", kind="dir")
        return cls(*load_clip(path, cls.name, "eval.weights.clipscore", device), device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        pixels = pixels_via_tensor(self.processor, self.model, images, self.device)
        img = F.normalize(image_features(self.model, pixels).float(), dim=-1)
        txt = F.normalize(text_features(self.model, **tokenize(self.processor, self.model, list(prompts),
                                                                self.device)).float(), dim=-1)
        return {"clipscore": (img * txt).sum(-1).tolist()}
