"""Scoring images against prompt tags as GenEval does (its evaluate_images.py rules).

Objects are grouped by shape in detection order (GenEval's: surest first). Each include clause takes
the first `count` objects of its shape: there must be that many, that many of them must have its
colour, and each must hold its relation to every object the clause it points at took (that clause
must have passed). An exclude clause fails the image when there are `count` or more of its shape.
The overall score is the mean of the per-category accuracies, so every category weighs the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from soar_fast.toy.detector import detect
from soar_fast.toy.relations import relations
from soar_fast.toy.tags import CATEGORIES


def score(objects: Sequence, tags: dict) -> bool:
    """Whether detected `objects` (with .color, .shape, .box, surest first) satisfy `tags`."""
    by_shape: dict[str, list] = {}
    for obj in objects:
        by_shape.setdefault(obj.shape, []).append(obj)
    correct = True
    taken: list[list | None] = []
    for req in tags.get("include", []):
        found = by_shape.get(req["class"], [])[: req["count"]]
        ok = len(found) >= req["count"]
        if ok and "color" in req:
            ok = sum(obj.color == req["color"] for obj in found) >= req["count"]
        if ok and "position" in req:
            relation, index = req["position"]
            targets = taken[index]
            ok = targets is not None and all(relation in relations(obj.box, t.box) for obj in found for t in targets)
        taken.append(found if ok else None)
        correct = correct and ok
    for req in tags.get("exclude", []):
        if len(by_shape.get(req["class"], [])) >= req["count"]:
            correct = False
    return correct


def _image(item: Image.Image | str | Path) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    with Image.open(item) as img:
        return img.convert("RGB")


def evaluate(images: Iterable[Image.Image | str | Path], prompts: Sequence[dict]) -> dict:
    """Per-category accuracy of `images` (PIL images or paths) against `prompts` (GenEval rows or tags,
    one per image) and "overall", the mean over the categories present."""
    images = list(images)
    if len(images) != len(prompts):
        raise ValueError(f"evaluate: {len(images)} images for {len(prompts)} prompts")
    hits: dict[str, list[bool]] = {}
    for img, tags in zip(images, prompts):
        hits.setdefault(tags["tag"], []).append(score(detect(_image(img)), tags))
    order = [c for c in CATEGORIES if c in hits] + sorted(c for c in hits if c not in CATEGORIES)
    per_category = {c: sum(hits[c]) / len(hits[c]) for c in order}
    overall = sum(per_category.values()) / len(per_category) if per_category else 0.0
    return {"per_category": per_category, "overall": overall}
