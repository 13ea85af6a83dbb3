"""HPSv2.1: open_clip ViT-H-14 with the HPS v2.1 weights; cosine of image and prompt features (~0.27–0.30).

Optional extra: `pip install open_clip_torch`. Weights: `eval.weights.hpsv2` = `HPS_v2.1_compressed.pt`
(huggingface.co/xswu/HPSv2). The reference first loads the LAION ViT-H-14 weights and then overwrites
every tensor with the HPS checkpoint, so only the HPS file is needed here. open_clip's ViT-H-14 BPE
tokenizer ships inside the package (no download).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import LOAD_ERRORS, Scorer, ScorerUnavailable, require_module, weight_path

ARCH = "ViT-H-14"
INSTALL = "pip install open_clip_torch"


def resize_max_size(x: torch.Tensor, size: int) -> torch.Tensor:
    """HPS's preprocessing: bicubic resize so the long side is `size`, zero-pad to a centred square."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    ph, pw = size - nh, size - nw
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


class HPSv2(Scorer):
    name = "hpsv2"
    keys = ("hpsv2",)

    def __init__(self, model: Any, tokenizer: Any, mean: torch.Tensor, std: torch.Tensor, size: int,
                 device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.mean, self.std, self.size = mean, std, size

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> HPSv2:
        open_clip = require_module("open_clip", cls.name, INSTALL)
        path = weight_path(cfg, "hpsv2", cls.name, "the HPS v2.1 checkpoint HPS_v2.1_compressed.pt "
                           "(huggingface.co/xswu/HPSv2)", kind="file")
        model = open_clip.create_model(ARCH, pretrained=None, precision="fp32", device="cpu")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as e:
            raise ScorerUnavailable(f"scorer 'hpsv2': cannot read {path!r} as a weights-only checkpoint: {e}") \
                from None
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise ScorerUnavailable(f"scorer 'hpsv2': {path!r} does not fit open_clip {ARCH} "
                                    f"(missing {missing[:3]}...)")
        model.requires_grad_(False).eval().to(device)
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean = torch.tensor(OPENAI_DATASET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_DATASET_STD, device=device).view(1, 3, 1, 1)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return cls(model, open_clip.get_tokenizer(ARCH), mean, std, int(size), device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        x = resize_max_size(images.to(self.device, torch.float32), self.size)
        x = (x - self.mean) / self.std
        img = self.model.encode_image(x, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device), normalize=True).float()
        return {"hpsv2": (img * txt).sum(-1).tolist()}
