"""Averages over the gathered per-image records, the GenEval task mean, and the markdown summary.

Every average is over unique (row, image) records (the partition guarantees no duplicates) and each
metric stays on its own scale: there is no cross-metric sum (the reference's `avg` added CLIP cosines
to ImageReward z-scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from soar_fast.eval.prompts import GENEVAL_TAGS


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else None


def mean_scores(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """Per key, the mean of `record["scores"][key]` over the records that hold a value for it."""
    out: dict[str, float] = {}
    for key in keys:
        m = _mean(r["scores"][key] for r in records if r["scores"].get(key) is not None)
        if m is not None:
            out[key] = m
    return out


def geneval_aggregate(tags: Sequence[str], correct: Sequence[bool], strict: Sequence[bool] | None = None,
                      score: Sequence[float] | None = None) -> dict[str, Any]:
    """GenEval as its authors report it: per-task accuracy = mean correctness over that task's images;
    overall (`geneval`) = the mean of the task accuracies (not the per-image mean, which weights tasks by
    their row counts: 320 counting vs 400 position rows). `correct` is the detector's verdict (the official
    script's, whose `exclude` clauses make counts exact; Flow-GRPO's non-strict ≥-count variant);
    `strict` Flow-GRPO's exact-count verdict; `score` its partial credit, where the detector gives them."""
    if not (len(tags) == len(correct) and (strict is None or len(strict) == len(tags))
            and (score is None or len(score) == len(tags))):
        raise ValueError("geneval_aggregate: tags, correct, strict and score must have one entry per image")

    def per_task(flags: Sequence[bool]) -> dict[str, float]:
        by_tag: dict[str, list[float]] = {}
        for tag, ok in zip(tags, flags):
            by_tag.setdefault(tag, []).append(float(bool(ok)))
        order = [t for t in GENEVAL_TAGS if t in by_tag] + sorted(t for t in by_tag if t not in GENEVAL_TAGS)
        return {t: sum(by_tag[t]) / len(by_tag[t]) for t in order}

    out: dict[str, Any] = {}
    if not tags:
        return out
    tasks = per_task(correct)
    out["geneval"] = sum(tasks.values()) / len(tasks)
    if strict is not None:
        tasks_strict = per_task(strict)
        out["geneval_strict"] = sum(tasks_strict.values()) / len(tasks_strict)
    out["geneval_image_accuracy"] = _mean(float(bool(c)) for c in correct)
    if score is not None:
        out["geneval_score"] = _mean(score)
    out["geneval_tasks"] = tasks
    if strict is not None:
        out["geneval_tasks_strict"] = tasks_strict
    missing = [t for t in GENEVAL_TAGS if t not in tasks]
    if missing:
        # With eval.limit some tasks may have no rows; the overall is then over the tasks present.
        out["geneval_missing_tasks"] = missing
    return out


def summary_markdown(averages: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """`summary.md`: one table of the headline metrics, one of GenEval's tasks when present."""
    lines = ["# Evaluation summary", ""]
    info = ", ".join(f"{k} = {v}" for k, v in run.items() if v is not None)
    lines += [info, "", "| metric | value |", "|---|---|"]
    for key, value in averages.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"| {key} | {_fmt(value)} |")
    tasks = averages.get("geneval_tasks")
    if tasks:
        strict = averages.get("geneval_tasks_strict", {})
        lines += ["", "| GenEval task | accuracy | strict accuracy |", "|---|---|---|"]
        for tag, acc in tasks.items():
            lines.append(f"| {tag} | {_fmt(acc)} | {_fmt(strict[tag]) if tag in strict else '-'} |")
        if averages.get("geneval_missing_tasks"):
            missing = ", ".join(averages["geneval_missing_tasks"])
            lines += ["", f"Tasks without rows (overall is over the others): {missing}"]
    return "\n".join(lines) + "\n"


def _fmt(v: float) -> str:
    return "nan" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"
