"""Scorers behind one interface: load once per process, score a batch without gradient, aggregate.

    scorer = load_scorers(["clipscore"], eval_cfg, device)[0]
    scores = scorer.score(images, prompts, metadata)   # images (B,3,H,W) float in [0,1]
    # -> {"clipscore": [float] * B}
    averages = scorer.aggregate(records)               # records: the gathered per-image dicts

Weights come only from local paths, `eval.weights.<name>` (plus a few secondary keys a scorer names in
its docstring). A scorer whose files or optional package are missing raises `ScorerUnavailable` at load
time, before any image is sampled, naming the scorer, the config key and what to install or download.
A scorer with `on_files = True` (GenEval's external detector) scores the saved PNGs after sampling via
`score_files` instead of `score`.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from soar_fast.config import EvalConfig
from soar_fast.config_io import ConfigError
from soar_fast.eval.aggregate import mean_scores
from soar_fast.eval.images import to_uint8

# What torch.load(weights_only=True) raises for a file that is not a plain tensor state dict.
LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError)


class ScorerUnavailable(ConfigError):
    """A scorer cannot be loaded: weights or an optional package missing (the message says which).
    A ConfigError, so the CLI reports it in one line (exit 2)."""


class Scorer:
    name: ClassVar[str]
    """Registry name, the `eval.scorers` entry and the `eval.weights.<name>` key."""
    keys: ClassVar[tuple[str, ...]]
    """Per-image score keys it writes into each record's `scores`."""
    on_files: ClassVar[bool] = False
    """Scores saved image files after sampling (`score_files`) instead of in-memory batches (`score`)."""

    @classmethod
    def load(cls, cfg: EvalConfig, device: torch.device) -> Scorer:
        raise NotImplementedError

    def score(self, images: torch.Tensor, prompts: Sequence[str],
              metadata: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        """`images` (B,3,H,W) float in [0,1] on any device -> {key: B floats}; no autograd."""
        raise NotImplementedError

    def score_files(self, records: Sequence[dict[str, Any]], workdir: str) -> list[dict[str, float]]:
        """For `on_files` scorers: one scores dict per record (records carry image_path, prompt, metadata)."""
        raise NotImplementedError

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """This scorer's entries of average_scores.json: by default the mean of each key over images."""
        return mean_scores(records, self.keys)


# name -> "module:Class"; imported on demand so an optional extra is only needed when its scorer is used.
REGISTRY: dict[str, str] = {
    "clipscore": "soar_fast.eval.scorers.clipscore:ClipScore",
    "pickscore": "soar_fast.eval.scorers.pickscore:PickScore",
    "aesthetic": "soar_fast.eval.scorers.aesthetic:Aesthetic",
    "hpsv2": "soar_fast.eval.scorers.hpsv2:HPSv2",
    "imagereward": "soar_fast.eval.scorers.imagereward:ImageReward",
    "ocr": "soar_fast.eval.scorers.ocr:OcrScore",
    "geneval": "soar_fast.eval.scorers.geneval:GenEval",
}

def scorer_class(name: str) -> type[Scorer]:
    if name not in REGISTRY:
        raise ConfigError(f"eval.scorers: unknown scorer {name!r}; choose from {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_scorers(names: Sequence[str], cfg: EvalConfig, device: torch.device) -> list[Scorer]:
    """Each named scorer, loaded once (order kept, duplicates dropped)."""
    for name in names:
        scorer_class(name)  # reject a typo before loading anything heavy
    return [scorer_class(n).load(cfg, device) for n in dict.fromkeys(names)]


def weight_path(cfg: EvalConfig, key: str, scorer: str, what: str, *, fallback: str | None = None,
                kind: str = "any") -> str:
    """The local path at `eval.weights.<key>` (or `<fallback>`), or ScorerUnavailable saying what to get.

    kind: "dir", "file" or "any" — what must exist at the path.
    """
    path = cfg.weights.get(key) or (cfg.weights.get(fallback) if fallback else None)
    keys = f"eval.weights.{key}" + (f" (or eval.weights.{fallback})" if fallback else "")
    if not path:
        raise ScorerUnavailable(f"scorer '{scorer}': set {keys} to {what}. Nothing is downloaded; "
                                f"docs/eval.md lists where to get it")
    path = os.path.expanduser(path)
    ok = {"dir": os.path.isdir, "file": os.path.isfile, "any": os.path.exists}[kind](path)
    if not ok:
        raise ScorerUnavailable(f"scorer '{scorer}': {keys} = {path!r} is not an existing "
                                f"{ {'dir': 'folder', 'file': 'file', 'any': 'path'}[kind] }; it must be {what}")
    return path


def require_module(module: str, scorer: str, install: str) -> Any:
    """Import an optional extra or raise ScorerUnavailable naming the scorer and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ScorerUnavailable(f"scorer '{scorer}' needs the Python package '{module}' ({e}); "
                                f"install it with: {install}") from None


def to_uint8_hwc(images: torch.Tensor) -> list[Any]:
    """(B,3,H,W) float [0,1] -> list of (H,W,3) uint8 numpy arrays, rounding (the reference scorers' rule)."""
    return list(to_uint8(images))
