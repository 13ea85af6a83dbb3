"""LAION aesthetic predictor: an MLP on L2-normalised CLIP ViT-L/14 image embeddings (~5.4 for SD3.5-M).

Weights: `eval.weights.aesthetic` = the MLP file `sac+logos+ava1-l14-linearMSE.pth`
(github.com/christophschuhmann/improved-aesthetic-predictor), loaded with `weights_only=True`, and the
CLIP ViT-L/14 folder at `eval.weights.aesthetic_clip` (default: `eval.weights.clipscore`, the same
model). `eval.weights.aesthetic` may instead be a folder holding a CLIP model and the MLP file (what
`soar-fast preset export tiny-clip` writes).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from soar_fast.config import EvalConfig
from soar_fast.eval.scorers import LOAD_ERRORS, Scorer, ScorerUnavailable, weight_path
from soar_fast.eval.scorers._clip import image_features, load_clip, pixels_via_processor

MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"


class AestheticMLP(nn.Module):
    """768→1024→128→64→16→1 with the original's dropouts (inert in eval); keys `layers.{0,2,4,6,7}`."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _find_mlp(folder: str) -> str:
    named = os.path.join(folder, MLP_FILE)
    if os.path.isfile(named):
        return named
    found = sorted(glob.glob(os.path.join(folder, "*.pth")))
    if len(found) != 1:
        raise ScorerUnavailable(f"scorer 'aesthetic': eval.weights.aesthetic = {folder!r} is a folder but holds "
                                f"{len(found)} .pth files; expected exactly one ({MLP_FILE})")
    return found[0]


class Aesthetic(Scorer):
    name = "aesthetic"
    keys = ("aesthetic",)

    def __init__(self, clip: Any, processor: Any, mlp: AestheticMLP, device: torch.device) -> None:
        self.clip, self.processor, self.mlp, self.device = clip, processor, mlp, device

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> Aesthetic:
        what = f"the LAION aesthetic MLP file {MLP_FILE}"
        path = weight_path(cfg, "aesthetic", cls.name, what)
        if os.path.isdir(path):
            mlp_path, clip_path = _find_mlp(path), path
        else:
            mlp_path = path
            clip_path = weight_path(cfg, "aesthetic_clip", cls.name, "a local CLIP ViT-L/14 folder "
                                    "(huggingface.co/openai/clip-vit-large-patch14)", fallback="clipscore",
                                    kind="dir")
        try:
            state = torch.load(mlp_path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as e:  # a pickle with code in it, or not a torch file at all
            raise ScorerUnavailable(f"scorer 'aesthetic': cannot read {mlp_path!r} as a weights-only torch "
                                    f"state dict: {e}") from None
        if not isinstance(state, dict):
            raise ScorerUnavailable(f"scorer 'aesthetic': {mlp_path!r} holds a {type(state).__name__}, not a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if "layers.0.weight" not in state:
            raise ScorerUnavailable(f"scorer 'aesthetic': {mlp_path!r} is not the aesthetic MLP "
                                    f"(no layers.0.weight; keys {sorted(state)[:4]}...)")
        clip, processor = load_clip(clip_path, cls.name, "eval.weights.aesthetic_clip", device)
        dim = state["layers.0.weight"].shape[1]
        if dim != clip.config.projection_dim:
            raise ScorerUnavailable(f"scorer 'aesthetic': the MLP takes {dim}-d embeddings but the CLIP at "
                                    f"{clip_path!r} projects to {clip.config.projection_dim} (use ViT-L/14)")
        mlp = AestheticMLP(dim)
        mlp.load_state_dict(state)
        mlp.requires_grad_(False).eval().to(device)
        return cls(clip, processor, mlp, device)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        pixels = pixels_via_processor(self.processor, images, self.device)
        emb = F.normalize(image_features(self.clip, pixels).float(), dim=-1)
        return {"aesthetic": self.mlp(emb).squeeze(-1).tolist()}
