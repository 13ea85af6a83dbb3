"""The reference prompt formats, read from the shared copies (never committed to this repo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from soar_fast.config_io import ConfigError
from soar_fast.eval.prompts import GENEVAL_TAGS, load_prompts

SETS = Path(__file__).resolve().parents[2] / "shared" / "eval-prompts"
needs_sets = pytest.mark.skipif(not SETS.is_dir(), reason=f"prompt sets not found at {SETS}")


@needs_sets
@pytest.mark.parametrize("dataset, file, rows, unique", [
    ("geneval", "geneval/test_metadata.jsonl", 2212, 553),
    ("ocr", "ocr/test.txt", 1018, 1018),
    ("pickscore", "pickscore/test.txt", 2048, 2048),
    ("drawbench", "drawbench/test.txt", 1000, 200),
])
def test_reference_sets_load_with_their_row_counts(dataset, file, rows, unique):
    loaded = load_prompts(str(SETS / file), dataset)
    assert len(loaded) == rows
    assert len({r.prompt for r in loaded}) == unique
    assert [r.index for r in loaded] == list(range(rows))
    if dataset == "geneval":
        assert {r.metadata["tag"] for r in loaded} == set(GENEVAL_TAGS)
        assert all(r.metadata["prompt"] == r.prompt and "include" in r.metadata for r in loaded)
    if dataset == "ocr":
        assert all(r.metadata["target"] and r.metadata["target"] in r.prompt for r in loaded)


@needs_sets
def test_limit_counts_rows():
    rows = load_prompts(str(SETS / "drawbench/test.txt"), "drawbench", limit=8)
    assert len(rows) == 8 and rows[-1].index == 7


def test_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"prompt": "a cat", "tag": "single_object"}\n{not json}\n')
    with pytest.raises(ConfigError, match=rf"{bad}:2: not JSON"):
        load_prompts(str(bad), "geneval")
    ocr = tmp_path / "ocr.txt"
    ocr.write_text('a sign saying "hi"\n\nno quotes here\n')
    with pytest.raises(ConfigError, match=rf"{ocr}:3: no double-quoted target"):
        load_prompts(str(ocr), "ocr")
    with pytest.raises(ConfigError, match="eval.prompts: prompt file not found"):
        load_prompts(str(tmp_path / "missing.txt"), "plain")
    with pytest.raises(ConfigError, match="eval.dataset"):
        load_prompts(str(ocr), "coco")


def test_blank_lines_are_skipped_and_rows_renumbered(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\n\n  two  \n")
    assert [(r.index, r.prompt) for r in load_prompts(str(f), "plain")] == [(0, "one"), (1, "two")]
