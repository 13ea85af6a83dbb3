"""The reference evaluation prompt files (docs/eval.md, "Prompt sets").

One `PromptRow` per row of the file; `eval.limit` counts rows, and a row's index is its position in
the file, so seeds, image names and the partition over ranks never depend on the limit or world size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from soar_fast.config_io import ConfigError

DATASETS = ("geneval", "ocr", "pickscore", "drawbench", "plain")

# The six GenEval tasks; the official overall score is the mean of their accuracies.
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


@dataclass(frozen=True)
class PromptRow:
    index: int
    """Row number in the prompt file (0-based, blank lines skipped)."""
    prompt: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """GenEval: the file's JSON object (tag, include, exclude, ...); OCR: {"target": text}; else {}."""


def ocr_target(prompt: str) -> str:
    """The text an OCR prompt asks for: between the first pair of double quotes (the reference rule)."""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f'no double-quoted target text in OCR prompt {prompt!r}')
    return parts[1]


def _text_rows(path: str, dataset: str) -> list[PromptRow]:
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            meta: dict[str, Any] = {}
            if dataset == "ocr":
                try:
                    meta = {"target": ocr_target(text)}
                except ValueError as e:
                    raise ConfigError(f"{path}:{lineno}: {e}") from None
                if not meta["target"].replace(" ", ""):
                    raise ConfigError(f"{path}:{lineno}: empty OCR target in {text!r}")
            rows.append(PromptRow(len(rows), text, meta))
    return rows


def _geneval_rows(path: str) -> list[PromptRow]:
    rows: list[PromptRow] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                meta = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(meta, dict) or not isinstance(meta.get("prompt"), str) or "tag" not in meta:
                raise ConfigError(f"{path}:{lineno}: a GenEval row needs 'prompt' and 'tag' "
                                 f"(got keys {sorted(meta) if isinstance(meta, dict) else type(meta).__name__})")
            rows.append(PromptRow(len(rows), meta["prompt"], meta))
    return rows


def load_prompts(path: str, dataset: str, limit: int = 0) -> list[PromptRow]:
    """Rows of a prompt file in `dataset`'s format; `limit` > 0 keeps the first `limit` rows."""
    if dataset not in DATASETS:
        raise ConfigError(f"eval.dataset: {dataset!r} is not one of {', '.join(DATASETS)}")
    try:
        rows = _geneval_rows(path) if dataset == "geneval" else _text_rows(path, dataset)
    except FileNotFoundError:
        raise ConfigError(f"eval.prompts: prompt file not found: {path} (docs/eval.md says where to "
                                f"get the {dataset} prompt set)") from None
    if not rows:
        raise ConfigError(f"eval.prompts: {path} holds no prompts")
    return rows[:limit] if limit > 0 else rows


def rows_from_list(prompts: list[str]) -> list[PromptRow]:
    """Rows for prompts given in the config (`eval.prompt_list`)."""
    return [PromptRow(i, p) for i, p in enumerate(prompts)]
