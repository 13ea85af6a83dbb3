"""GenEval: object detection checks of the prompt's objects, counts, colours and positions.

The detector stack (mmdet 2.x Mask2Former + an open_clip colour classifier) is too heavy and too
version-pinned for the core, so it runs as an external command after sampling, on the saved images in
GenEval's own layout (`images/<row:05d>/metadata.jsonl` + `images/<row:05d>/samples/<k:04d>.png`).
`eval.geneval_command` is a shell command with placeholders `{images}` (that folder), `{results}` (the
JSONL it must write) and `{weights}` (`eval.weights.geneval`, the detector folder), e.g. the official
    python <geneval>/evaluation/evaluate_images.py {images} --outfile {results} --model-path {weights}
Each output line needs `filename` (the image path) and `correct` (bool); `strict_correct` (exact-count
correctness) and `score` (partial credit, Flow-GRPO's variant) are used when present. The aggregation,
the task mean over the six tags, is core (`aggregate.geneval_aggregate`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

import torch

from soar_fast.config import EvalConfig
from soar_fast.eval.aggregate import geneval_aggregate
from soar_fast.eval.scorers import Scorer, ScorerUnavailable


def image_key(path: str) -> tuple[int, int]:
    """(row, image) from `.../<row>/samples/<k>.png`, however the command spelled the path."""
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) < 3 or parts[-2] != "samples":
        raise ValueError(f"GenEval result filename {path!r} is not <row>/samples/<k>.png")
    return int(parts[-3]), int(os.path.splitext(parts[-1])[0])


def read_results(path: str) -> dict[tuple[int, int], dict[str, float]]:
    """Per image: geneval_correct, and geneval_strict_correct / geneval_score when the file has them."""
    out: dict[tuple[int, int], dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scores = {"geneval_correct": float(bool(row["correct"]))}
                key = image_key(row["filename"])
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: not a GenEval result line ({e})") from None
            if "strict_correct" in row:
                scores["geneval_strict_correct"] = float(bool(row["strict_correct"]))
            if row.get("score") is not None:
                scores["geneval_score"] = float(row["score"])
            out[key] = scores
    return out


class GenEval(Scorer):
    name = "geneval"
    keys = ("geneval_correct", "geneval_strict_correct", "geneval_score")
    on_files = True

    def __init__(self, command: str, weights: str) -> None:
        self.command, self.weights = command, weights

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> GenEval:
        if not cfg.geneval_command:
            raise ScorerUnavailable(
                "scorer 'geneval': set eval.geneval_command to the detector command, e.g. "
                "'python <geneval>/evaluation/evaluate_images.py {images} --outfile {results} "
                "--model-path {weights}' with eval.weights.geneval = the folder of the Mask2Former "
                "checkpoint (github.com/djghosh13/geneval, which installs mmdet 2.x); see docs/eval.md")
        return cls(cfg.geneval_command, cfg.weights.get("geneval", ""))

    def score_files(self, records: Sequence[dict[str, Any]], workdir: str) -> list[dict[str, float]]:
        images = os.path.join(workdir, "images")
        results = os.path.join(workdir, "geneval_results.jsonl")
        if os.path.exists(results):
            os.remove(results)
        cmd = self.command.format(images=shlex.quote(images), results=shlex.quote(results),
                                  weights=shlex.quote(self.weights))
        proc = subprocess.run(cmd, shell=True, check=False, cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(results):
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"eval.geneval_command exited with {proc.returncode}"
                               f"{'' if os.path.isfile(results) else ' without writing ' + results}:\n"
                               f"$ {cmd}\n{tail}")
        by_image = read_results(results)
        missing = [(r["row"], r["image_index"]) for r in records
                   if (r["row"], r["image_index"]) not in by_image]
        if missing:
            raise RuntimeError(f"{results} has no result for {len(missing)} images, first: row {missing[0][0]} "
                               f"image {missing[0][1]}")
        return [by_image[(r["row"], r["image_index"])] for r in records]

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = [r for r in records if "geneval_correct" in r["scores"]]
        has_strict = all("geneval_strict_correct" in r["scores"] for r in rows)
        has_score = all("geneval_score" in r["scores"] for r in rows)
        return geneval_aggregate(
            [r["metadata"].get("tag", "unknown") for r in rows],
            [bool(r["scores"]["geneval_correct"]) for r in rows],
            [bool(r["scores"]["geneval_strict_correct"]) for r in rows] if has_strict and rows else None,
            [r["scores"]["geneval_score"] for r in rows] if has_score and rows else None)
