"""OCR reward: how well the rendered text matches the prompt's first double-quoted string.

The score (core, no extra needed) is the reference's: target = text between the first pair of double
quotes; both strings lower-cased with spaces removed; reward = 1 if the target is a substring of the
recognised text, else 1 − min(Levenshtein, |target|)/|target|. Recognition is the optional extra
PaddleOCR 2.x (`pip install "paddleocr>=2.7,<3" paddlepaddle`, or paddlepaddle-gpu) with local models:
`eval.weights.ocr` = a folder holding PaddleOCR's English inference models as `det/` and `rec/`
(e.g. en_PP-OCRv3_det_infer, en_PP-OCRv4_rec_infer from paddleocr.bj.bcebos.com). The reference ran
PaddleOCR on the CPU; here it uses the GPU when paddlepaddle-gpu is installed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from soar_fast.config import EvalConfig
from soar_fast.eval.prompts import ocr_target
from soar_fast.eval.scorers import Scorer, ScorerUnavailable, require_module, to_uint8_hwc, weight_path

INSTALL = 'pip install "paddleocr>=2.7,<3" paddlepaddle'


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each costs 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_reward(recognized: str, target: str) -> float:
    """1 − min(d, |t|)/|t| on lower-cased, space-free strings; 1 when the target is a substring."""
    t = target.replace(" ", "").lower()
    r = recognized.replace(" ", "").lower()
    if not t:
        raise ValueError("ocr_reward: empty target text")
    dist = 0 if t in r else min(levenshtein(r, t), len(t))
    return 1.0 - dist / len(t)


def ocr_prompt_reward(recognized: str, prompt: str) -> float:
    return ocr_reward(recognized, ocr_target(prompt))


class OcrScore(Scorer):
    name = "ocr"
    keys = ("ocr",)

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> OcrScore:
        paddleocr = require_module("paddleocr", cls.name, INSTALL)
        folder = weight_path(cfg, "ocr", cls.name, "a folder with PaddleOCR English inference models in det/ "
                             "and rec/ (en_PP-OCRv3_det_infer, en_PP-OCRv4_rec_infer)", kind="dir")
        for sub in ("det", "rec"):
            if not os.path.isdir(os.path.join(folder, sub)):
                raise ScorerUnavailable(f"scorer 'ocr': eval.weights.ocr = {folder!r} has no {sub}/ model folder")
        engine = paddleocr.PaddleOCR(use_angle_cls=False, lang="en", use_gpu=device.type == "cuda",
                                     show_log=False, det_model_dir=os.path.join(folder, "det"),
                                     rec_model_dir=os.path.join(folder, "rec"))
        return cls(engine)

    def recognize(self, image: Any) -> str:
        """Recognised lines with confidence > 0, concatenated (the reference's rule)."""
        result = self.engine.ocr(image, cls=False)
        if not result or not result[0]:
            return ""
        return "".join(text for _, (text, conf) in result[0] if conf > 0)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        rewards = []
        for img, prompt in zip(to_uint8_hwc(images), prompts):
            try:
                recognized = self.recognize(img)
            except (ValueError, RuntimeError, IndexError):
                recognized = ""  # the reference scores a failed recognition as 0 (distance = |target|)
            rewards.append(ocr_prompt_reward(recognized, prompt))
        return {"ocr": rewards}
