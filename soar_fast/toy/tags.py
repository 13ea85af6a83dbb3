"""Prompts of the shapes benchmark as GenEval tags, and their captions.

A prompt is a GenEval metadata object: `{"tag": category, "include": [{"class", "count", "color"?,
"position"?: [relation, index]}], "exclude"?: [...]}`, where the class is a shape. `caption(tags)` is
its text; `prompt_space(category)` lists every prompt of a category, so the split (split.py) can be
stated over all of them.
"""

from __future__ import annotations

import itertools

from soar_fast.toy.palette import COLORS, MAX_COUNT, NUMBERS, SHAPES, plural

# GenEval's six tasks, in its order; the overall score is the mean of their accuracies.
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


def single_object(shape: str) -> dict:
    return {"tag": "single_object", "include": [{"class": shape, "count": 1}]}


def two_object(first: str, second: str) -> dict:
    return {"tag": "two_object", "include": [{"class": first, "count": 1}, {"class": second, "count": 1}]}


def counting(shape: str, count: int) -> dict:
    # As in GenEval: at least `count` and fewer than `count + 1`, i.e. exactly `count`.
    return {"tag": "counting", "include": [{"class": shape, "count": count}],
            "exclude": [{"class": shape, "count": count + 1}]}


def colors(color: str, shape: str) -> dict:
    return {"tag": "colors", "include": [{"class": shape, "count": 1, "color": color}]}


def position(subject: str, relation: str, target: str) -> dict:
    """"a `subject` `relation` a `target`": GenEval lists the target first and points at it by index."""
    return {"tag": "position", "include": [{"class": target, "count": 1},
                                           {"class": subject, "count": 1, "position": [relation, 0]}]}


def color_attr(first: tuple[str, str], second: tuple[str, str]) -> dict:
    """Two (colour, shape) objects."""
    return {"tag": "color_attr", "include": [{"class": first[1], "count": 1, "color": first[0]},
                                             {"class": second[1], "count": 1, "color": second[0]}]}


def _noun(req: dict) -> str:
    return f"a {req['color']} {req['class']}" if "color" in req else f"a {req['class']}"


def caption(tags: dict) -> str:
    inc = tags["include"]
    tag = tags["tag"]
    if tag == "counting":
        n = inc[0]["count"]
        return f"{NUMBERS[n - 1]} {inc[0]['class'] if n == 1 else plural(inc[0]['class'])}"
    if tag == "position":
        return f"{_noun(inc[1])} {inc[1]['position'][0]} {_noun(inc[0])}"
    if tag in ("two_object", "color_attr"):
        return f"{_noun(inc[0])} and {_noun(inc[1])}"
    if tag in ("single_object", "colors"):
        return _noun(inc[0])
    raise ValueError(f"tags.tag: {tag!r} is not one of {', '.join(CATEGORIES)}")


def with_prompt(tags: dict) -> dict:
    """The tags as a GenEval evaluation_metadata row: the same keys plus "prompt"."""
    return {**tags, "prompt": caption(tags)}


def prompt_space(category: str) -> list[dict]:
    """Every prompt of `category`, in a fixed order."""
    pairs = list(itertools.product(COLORS, SHAPES))
    ordered_shapes = list(itertools.permutations(SHAPES, 2))
    if category == "single_object":
        return [single_object(s) for s in SHAPES]
    if category == "two_object":
        return [two_object(a, b) for a, b in ordered_shapes]
    if category == "counting":
        return [counting(s, n) for n in range(1, MAX_COUNT + 1) for s in SHAPES]
    if category == "colors":
        return [colors(c, s) for c, s in pairs]
    if category == "position":
        return [position(a, r, b) for a, b in ordered_shapes for r in RELATIONS]
    if category == "color_attr":
        return [color_attr(p, q) for p in pairs for q in pairs if p[0] != q[0] and p[1] != q[1]]
    raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
