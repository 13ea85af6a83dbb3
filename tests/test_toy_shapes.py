"""The shapes data set: reference format, determinism, balance, the held-out split, GenEval's shape."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soar_fast.data.scan import scan
from soar_fast.eval.prompts import GENEVAL_TAGS, load_prompts
from soar_fast.toy import (
    CATEGORIES,
    COLORS,
    PALETTE,
    SHAPES,
    caption,
    heldout_prompts,
    is_heldout,
    render,
    write_heldout_prompts,
    write_shapes_set,
)
from soar_fast.toy.relations import relations
from soar_fast.toy.render import layout
from soar_fast.toy.split import HELDOUT_PAIRS, HELDOUT_SPACE, TRAIN_SPACE
from soar_fast.toy.tags import color_attr, colors, counting, position, prompt_space, single_object, two_object

GENEVAL = Path(__file__).resolve().parents[2] / "shared" / "eval-prompts" / "geneval" / "test_metadata.jsonl"
SIZE = 150


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    jsonl = write_shapes_set(folder, size=SIZE, side=32, seed=3)
    return jsonl, [json.loads(line) for line in jsonl.read_text().splitlines()]


def test_captions_read_like_geneval_prompts():
    assert caption(single_object("circle")) == "a circle"
    assert caption(two_object("square", "triangle")) == "a square and a triangle"
    assert caption(counting("triangle", 3)) == "three triangles"
    assert caption(counting("square", 1)) == "one square"
    assert caption(colors("blue", "square")) == "a blue square"
    assert caption(position("circle", "left of", "square")) == "a circle left of a square"
    assert caption(color_attr(("red", "circle"), ("cyan", "triangle"))) == "a red circle and a cyan triangle"
    assert CATEGORIES == GENEVAL_TAGS


def test_the_set_is_in_the_reference_format(shapes):
    jsonl, lines = shapes
    result = scan(jsonl, policy="error", progress=False)
    assert len(result.records) == SIZE and not result.skipped
    for record, line, path in zip(result.records, lines, result.images):
        assert record.caption == line["caption_en"] == caption(line["tags"])
        assert record.bucket == (32, 32) and path.suffix == ".png"
        with Image.open(path) as img:
            assert img.size == (32, 32) and img.mode == "RGB"


def test_categories_are_balanced_and_every_caption_is_a_trained_one(shapes):
    _, lines = shapes
    counts = Counter(line["tags"]["tag"] for line in lines)
    assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) <= 1
    assert not any(is_heldout(line["tags"]) for line in lines)
    assert len({line["caption_en"] for line in lines}) > 40


def test_same_seed_same_bytes_and_rewriting_is_a_no_op(shapes, tmp_path):
    jsonl, _ = shapes
    again = write_shapes_set(tmp_path, size=SIZE, side=32, seed=3)
    assert again.read_bytes() == jsonl.read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    write_shapes_set(tmp_path, size=SIZE, side=32, seed=3)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before     # nothing rewritten
    other = write_shapes_set(tmp_path / "other", size=SIZE, side=32, seed=4)
    assert other.read_bytes() != jsonl.read_bytes()


def test_undrawable_tags_are_refused_with_the_clause():
    with pytest.raises(ValueError, match="'class': 'hexagon'"):
        render({"tag": "single_object", "include": [{"class": "hexagon", "count": 1}]}, 32, 0)
    with pytest.raises(ValueError, match="5 objects"):
        render({"tag": "counting", "include": [{"class": "circle", "count": 3}, {"class": "square", "count": 2}]}, 32, 0)


def test_wrong_sizes_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="side=40"):
        write_shapes_set(tmp_path, size=4, side=40)
    with pytest.raises(ValueError, match="size=0"):
        write_shapes_set(tmp_path, size=0)


@pytest.mark.parametrize("side", [32, 48, 64])
def test_layouts_satisfy_their_tags(side):
    rng = random.Random(side)
    for category in CATEGORIES:
        for tags in prompt_space(category)[:24]:
            placed = layout(tags, side, rng)
            assert len(placed) == sum(r["count"] for r in tags["include"])
            for obj in placed:
                x0, y0, x1, y1 = obj.box
                assert 0 < x0 < x1 < side and 0 < y0 < y1 < side and obj.color in COLORS and obj.shape in SHAPES
            for a in placed:                           # never touching: a gap on some axis
                for b in placed:
                    if a is not b:
                        assert a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
            wanted = Counter((r["class"], r.get("color")) for r in tags["include"] for _ in range(r["count"]))
            drawn = Counter((o.shape, o.color if any("color" in r for r in tags["include"]) else None) for o in placed)
            assert drawn == wanted
            if category == "position":
                rel = tags["include"][1]["position"][0]
                assert relations(placed[1].box, placed[0].box) == {rel}      # the asked one and no other


def test_render_draws_palette_objects_on_a_grey_background():
    img = render(colors("purple", "square"), 64, random.Random(0))
    pixels = Counter(map(tuple, np.asarray(img).reshape(-1, 3).tolist()))
    (bg, _), (fg, _) = pixels.most_common(2)
    assert fg == PALETTE["purple"]
    assert max(bg) - min(bg) <= 16 and min(sum(abs(a - b) for a, b in zip(bg, c)) for c in PALETTE.values()) > 100
    assert render(colors("purple", "square"), 64, random.Random(0)).tobytes() == img.tobytes()


def test_the_split_holds_out_compositions_and_keeps_their_parts():
    for category in CATEGORIES:
        trained = {caption(t) for t in TRAIN_SPACE[category]}
        held = {caption(t) for t in HELDOUT_SPACE[category]}
        assert held and trained
        if category == "single_object":
            assert held == trained
        else:
            assert not held & trained and held | trained == {caption(t) for t in prompt_space(category)}
    # Every colour and shape of a held-out pair is trained in other pairs.
    trained_pairs = {(r["color"], r["class"]) for t in TRAIN_SPACE["colors"] for r in t["include"]}
    assert not trained_pairs & HELDOUT_PAIRS
    assert {c for c, _ in trained_pairs} == set(COLORS) and {s for _, s in trained_pairs} == set(SHAPES)
    # A position prompt and its mirror phrasing fall on the same side of the split.
    for t in prompt_space("position"):
        subject, target = t["include"][1]["class"], t["include"][0]["class"]
        mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        assert is_heldout(t) == is_heldout(position(target, mirror[t["include"][1]["position"][0]], subject))


def test_heldout_prompts_are_seeded_balanced_and_cover_the_space():
    rows = heldout_prompts(seed=0, n=600)
    assert rows == heldout_prompts(seed=0, n=600) and rows != heldout_prompts(seed=1, n=600)
    assert heldout_prompts(seed=0, n=60) == rows[:60]
    assert Counter(r["tag"] for r in rows) == {c: 100 for c in CATEGORIES}
    for r in rows:
        assert r["prompt"] == caption(r) and (is_heldout(r) or r["tag"] == "single_object")
    small = [c for c in CATEGORIES if len(HELDOUT_SPACE[c]) <= 100]
    for c in small:                               # each prompt once before any repeats
        assert {r["prompt"] for r in rows if r["tag"] == c} == {caption(t) for t in HELDOUT_SPACE[c]}


def test_heldout_file_loads_as_a_geneval_prompt_set(tmp_path):
    path = write_heldout_prompts(tmp_path / "heldout.jsonl", seed=2, n=36)
    rows = load_prompts(str(path), "geneval")
    assert [r.metadata for r in rows] == heldout_prompts(seed=2, n=36)


def _structure(row: dict) -> tuple:
    return (tuple(sorted(row)), tuple(tuple(sorted(r)) for r in row["include"]),
            tuple(tuple(sorted(r)) for r in row.get("exclude", [])))


@pytest.mark.skipif(not GENEVAL.is_file(), reason=f"GenEval metadata not found at {GENEVAL}")
def test_rows_have_the_shape_of_genevals_metadata():
    real: dict[str, set] = {}
    for line in GENEVAL.read_text().splitlines():
        row = json.loads(line)
        real.setdefault(row["tag"], set()).add(_structure(row))
    ours: dict[str, set] = {}
    for row in heldout_prompts(seed=0, n=120):
        ours.setdefault(row["tag"], set()).add(_structure(row))
        for req in row["include"]:
            if "position" in req:
                assert isinstance(req["position"][0], str) and isinstance(req["position"][1], int)
    assert ours == real
