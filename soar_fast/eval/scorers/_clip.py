"""Shared by the CLIP-based scorers: local loading, the two image preprocessings, projected features,
and `ClipSimilarity`, the one loading and scoring path of CLIPScore and PickScore."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import Scorer, ScorerUnavailable, to_uint8_hwc, weight_path


def load_clip(path: str, scorer: str, key: str, device: torch.device, *, processor_path: str | None = None
              ) -> tuple[Any, Any]:
    """(CLIPModel in eval mode, float32, frozen; CLIPProcessor) from local folders only."""
    from safetensors import SafetensorError
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError) as e:  # SafetensorError: a truncated or LFS-pointer file
        raise ScorerUnavailable(f"scorer '{scorer}': {key} = {path!r} is not a loadable CLIP model folder "
                                f"(config.json + weights): {e}") from None
    proc_path = processor_path or path
    try:
        processor = CLIPProcessor.from_pretrained(proc_path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ScorerUnavailable(f"scorer '{scorer}': no CLIP processor (tokenizer + preprocessor config) "
                                f"in {proc_path!r}: {e}") from None
    model.requires_grad_(False).eval().to(device)
    return model, processor


def image_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings (B,P), unnormalised (same across transformers 4.x and 5.x)."""
    return model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)


def text_features(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return model.text_projection(model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output)


def tokenize(processor: Any, model: Any, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Padded/truncated to the text tower's length (77 for every public CLIP)."""
    length = model.config.text_config.max_position_embeddings
    tok = processor.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                              return_tensors="pt")
    return {"input_ids": tok["input_ids"].to(device), "attention_mask": tok["attention_mask"].to(device)}


def pixels_via_processor(processor: Any, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The reference's PIL path (aesthetic, pickscore): uint8 by rounding -> CLIPProcessor
    (bicubic shortest-side resize, centre crop, CLIP mean/std)."""
    out = processor.image_processor(images=to_uint8_hwc(images), return_tensors="pt")
    return out["pixel_values"].to(device=device, dtype=torch.float32)


def pixels_via_tensor(processor: Any, model: Any, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The reference's tensor path (clipscore): float image, bilinear antialiased shortest-side resize to
    the tower's size, centre crop, CLIP mean/std; no uint8 rounding."""
    size = model.config.vision_config.image_size
    x = images.to(device=device, dtype=torch.float32)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipSimilarity(Scorer):
    """A scorer that is a function of cos(image, prompt) under one CLIP model from a local folder.

    A subclass names its weights (`name` is also the `eval.weights` key), where a processor may come
    from (`processor_key`), its image preprocessing (`tensor_pixels`) and `from_cosine`."""

    what: ClassVar[str] = "a local CLIP folder"
    processor_key: ClassVar[str | None] = None
    processor_what: ClassVar[str] = ""
    tensor_pixels: ClassVar[bool] = False
    """True: the reference's float-tensor preprocessing; False: its PIL/uint8 CLIPProcessor path."""

    def __init__(self, model: Any, processor: Any, device: torch.device) -> None:
        self.model, self.processor, self.device = model, processor, device

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> ClipSimilarity:
        path = weight_path(cfg, cls.name, cls.name, cls.what, kind="dir")
        proc = None
        if cls.processor_key and cfg.weights.get(cls.processor_key):
            proc = weight_path(cfg, cls.processor_key, cls.name, cls.processor_what, kind="dir")
        return cls(*load_clip(path, cls.name, f"eval.weights.{cls.name}", device, processor_path=proc), device)

    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        pixels = (pixels_via_tensor(self.processor, self.model, images, self.device) if self.tensor_pixels
                  else pixels_via_processor(self.processor, images, self.device))
        img = F.normalize(image_features(self.model, pixels).float(), dim=-1)
        txt = F.normalize(text_features(self.model, **tokenize(self.processor, self.model, list(prompts),
                                                                self.device)).float(), dim=-1)
        return {self.keys[0]: self.from_cosine((img * txt).sum(-1)).tolist()}
