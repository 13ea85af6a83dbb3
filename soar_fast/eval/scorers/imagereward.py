"""ImageReward v1.0 (BLIP + MLP), the package's normalised score (~1.0 for SD3.5-M).

Optional extra: `pip install image-reward`. Weights: `eval.weights.imagereward` = `ImageReward.pt` and
its `med_config.json` beside it or at `eval.weights.imagereward_med_config`
(huggingface.co/THUDM/ImageReward). The package's BLIP builds a `bert-base-uncased` tokenizer through
transformers, which must be in the local Hugging Face cache (run with HF_HUB_OFFLINE=1).

Scoring is one pass per (prompt, image) pair, O(B); the reference ranked B prompts × B images and kept
the diagonal, O(B²), and failed on a batch of one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import Scorer, ScorerUnavailable, require_module, to_uint8_hwc, weight_path

INSTALL = "pip install image-reward"


class ImageReward(Scorer):
    name = "imagereward"
    keys = ("imagereward",)

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model, self.device = model, device

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> ImageReward:
        rm = require_module("ImageReward", cls.name, INSTALL)
        path = weight_path(cfg, "imagereward", cls.name, "the ImageReward.pt checkpoint "
                           "(huggingface.co/THUDM/ImageReward)", kind="file")
        med = cfg.weights.get("imagereward_med_config") or os.path.join(os.path.dirname(path), "med_config.json")
        if not os.path.isfile(med):
            raise ScorerUnavailable(f"scorer 'imagereward': med_config.json not found at {med!r}; put it beside "
                                    f"ImageReward.pt or set eval.weights.imagereward_med_config "
                                    f"(huggingface.co/THUDM/ImageReward)")
        model = rm.load(path, device=device, med_config=med)
        model.requires_grad_(False).eval()
        return cls(model, device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        m = self.model
        text = m.blip.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=35,
                                return_tensors="pt").to(self.device)
        pixels = torch.stack([m.preprocess(Image.fromarray(a)) for a in to_uint8_hwc(images)]).to(self.device)
        image_embeds = m.blip.visual_encoder(pixels)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = m.blip.text_encoder(text.input_ids, attention_mask=text.attention_mask,
                                  encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts,
                                  return_dict=True)
        reward = m.mlp(out.last_hidden_state[:, 0, :].float())
        return {"imagereward": ((reward - m.mean) / m.std).squeeze(-1).tolist()}
