"""PickScore: exp(logit_scale)·cos(image, prompt) of the PickScore_v1 CLIP-H model (~22 for SD3.5-M).

Reported on the usual ×26 scale directly: the reference's scorer divides by 26 and its README
multiplies back. Weights: `eval.weights.pickscore` = a local `yuvalkirstain/PickScore_v1` folder;
its processor (tokenizer + image preprocessing) comes from `eval.weights.pickscore_processor` = a local
`laion/CLIP-ViT-H-14-laion2B-s32B-b79K` folder, or from the model folder when it holds one.
"""

from __future__ import annotations

import torch

from soar_fast.eval.scorers._clip import ClipSimilarity


class PickScore(ClipSimilarity):
    name = "pickscore"
    keys = ("pickscore",)
    what = "a local PickScore_v1 folder (huggingface.co/yuvalkirstain/PickScore_v1)"
    processor_key = "pickscore_processor"
    processor_what = "a local CLIP-ViT-H-14 processor folder (huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K)"

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return self.model.logit_scale.exp().float() * cosine
