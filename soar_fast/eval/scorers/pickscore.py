"""PickScore: exp(logit_scale)·cos(image, prompt) of the PickScore_v1 CLIP-H model (~22 for SD3.5-M).

Reported on the usual ×26 scale directly: the reference's scorer divides by 26 and its README
multiplies back. Weights: `eval.weights.pickscore` = a local `yuvalkirstain/PickScore_v1` folder;
its processor (tokenizer + image preprocessing) comes from `eval.weights.pickscore_processor` = a local
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` folder, or from the model folder when it holds one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import Scorer, weight_path
from soar_fast.eval.scorers._clip import (
    image_features,
    load_clip,
    pixels_via_processor,
    text_features,
    tokenize,
)


class PickScore(Scorer):
    name = "pickscore"
    keys = ("pickscore",)

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model, self.processor, self.device = model, processor, device

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> PickScore:
        path = weight_path(cfg, "pickscore", cls.name, "a local PickScore_v1 folder "
                           "(huggingface.co/yuvalkirstain/PickScore_v1)", kind="dir")
        proc = None
        if cfg.weights.get("pickscore_processor"):
            proc = weight_path(cfg, "pickscore_processor", cls.name, "a local CLIP-ViT-H-14 processor folder "
                               "(huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K)", kind="dir")
        return cls(*load_clip(path, cls.name, "eval.weights.pickscore", device, processor_path=proc), device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        pixels = pixels_via_processor(self.processor, images, self.device)
        img = F.normalize(image_features(self.model, pixels).float(), dim=-1)
        txt = F.normalize(text_features(self.model, **tokenize(self.processor, self.model, list(prompts),
                                                                self.device)).float(), dim=-1)
        return {"pickscore": (self.model.logit_scale.exp().float() * (img * txt).sum(-1)).tolist()}
