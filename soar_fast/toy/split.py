"""Which prompts the model trains on and which it is scored on (docs/experiments.md, "The split").

The held-out prompts are compositions the training captions never name: six (colour, shape) pairs,
one pair of shapes in `two_object`, three (shape, count) pairs, and for each pair of shapes one
left-right and one top-bottom arrangement (in both phrasings). Their parts are all trained: a held-out
red circle is never *called* a red circle in training, but red objects and circles are, and images
under captions that name no colour may show one. `single_object` has three prompts in all, so its
held-out prompts are the trained ones (it measures fidelity, not generalisation).
"""

from __future__ import annotations

import copy
import random

from soar_fast.toy.palette import COLORS, SHAPES
from soar_fast.toy.tags import CATEGORIES, prompt_space, with_prompt

# Colour i with shape i mod 3: each colour once, each shape twice.
HELDOUT_PAIRS = frozenset((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLORS))
HELDOUT_TWO_OBJECT = frozenset({frozenset({"square", "triangle"})})
HELDOUT_COUNTS = frozenset({("triangle", 2), ("circle", 3), ("square", 4)})
# (first, second, axis): `first` left of (axis "x") or above (axis "y") `second`.
HELDOUT_LAYOUTS = frozenset({
    ("circle", "square", "x"), ("triangle", "circle", "x"), ("square", "triangle", "x"),
    ("square", "circle", "y"), ("circle", "triangle", "y"), ("triangle", "square", "y"),
})


def _layout(tags: dict) -> tuple[str, str, str]:
    target, subject = tags["include"][0]["class"], tags["include"][1]["class"]
    relation = tags["include"][1]["position"][0]
    first, second = (subject, target) if relation in ("left of", "above") else (target, subject)
    return first, second, "x" if relation in ("left of", "right of") else "y"


def is_heldout(tags: dict) -> bool:
    """True when the prompt is one the training captions never say (always False for single_object)."""
    inc = tags["include"]
    tag = tags["tag"]
    if tag == "two_object":
        return frozenset(r["class"] for r in inc) in HELDOUT_TWO_OBJECT
    if tag == "counting":
        return (inc[0]["class"], inc[0]["count"]) in HELDOUT_COUNTS
    if tag in ("colors", "color_attr"):
        return any((r["color"], r["class"]) in HELDOUT_PAIRS for r in inc)
    if tag == "position":
        return _layout(tags) in HELDOUT_LAYOUTS
    return False


TRAIN_SPACE = {c: tuple(t for t in prompt_space(c) if not is_heldout(t)) for c in CATEGORIES}
HELDOUT_SPACE = {c: tuple(t for t in prompt_space(c) if c == "single_object" or is_heldout(t))
                 for c in CATEGORIES}


def training_tags(rng: random.Random, index: int) -> dict:
    """The tags of training sample `index`: categories in turn, a uniform prompt of the category."""
    return copy.deepcopy(rng.choice(TRAIN_SPACE[CATEGORIES[index % len(CATEGORIES)]]))


def heldout_prompts(*, seed: int = 0, n: int = 240) -> list[dict]:
    """`n` held-out evaluation rows (GenEval metadata with "prompt"), categories in turn; within a
    category the prompts come in a seeded shuffled order and repeat only once all have come."""
    rng = random.Random(f"soar-fast-shapes-heldout:{seed}")
    orders = {c: rng.sample(HELDOUT_SPACE[c], len(HELDOUT_SPACE[c])) for c in CATEGORIES}
    rows = []
    for i in range(n):
        category = CATEGORIES[i % len(CATEGORIES)]
        order = orders[category]
        rows.append(with_prompt(copy.deepcopy(order[(i // len(CATEGORIES)) % len(order)])))
    return rows
