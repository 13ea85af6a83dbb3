"""Reading the reference JSONL and reporting bad inputs (docs/data.md, "Format" and "Bad inputs")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soar_fast.data.errors import DataError
from soar_fast.data.records import Record, Skipped, parse_caption, parse_line
from soar_fast.data.report import build_report, summary
from soar_fast.data.scan import scan
from tests.test_data_fixtures import write_acceptance_set


@pytest.mark.parametrize("raw, want", [
    ("  a cat  ", "a cat"), ("nan", ""), ("None", ""), (None, ""), (123, "123"),
    ('{"long_caption": "", "medium_caption": "mid", "text": "t"}', "mid"),
    ('{"text": "only text"}', "only text"),
    ('{"other": 1}', '{"other": 1}'),          # no caption key: the raw string
    ("{not json", "{not json"),                 # parse failure: the raw string
])
def test_parse_caption_like_the_reference(raw: object, want: str) -> None:
    assert parse_caption(raw) == want


def test_parse_line_reasons() -> None:
    ok = parse_line(json.dumps({"md5": "ab", "caption_en": "x", "bw": 64, "bh": "32"}), 3, 16)
    assert ok == Record(3, "ab", "x", 64, 32)
    cases = {
        '{"md5": "ab", "bw": 64': "malformed JSON",
        '[1, 2]': "expected a JSON object",
        '{"caption_en": "x", "bw": 64, "bh": 64}': "'md5'",
        '{"md5": "ab", "caption_en": "x", "bh": 64}': "'bw'",
        '{"md5": "ab", "caption_en": "x", "bw": 60, "bh": 64}': "multiple of 16",
        '{"md5": "ab", "caption_en": "x", "bw": 64.5, "bh": 64}': "not an integer",
        '{"md5": "../x", "caption_en": "x", "bw": 64, "bh": 64}': "plain file stem",
    }
    for text, reason in cases.items():
        item = parse_line(text, 7, 16)
        assert isinstance(item, Skipped) and item.fatal and reason in item.reason, (text, item)
    empty = parse_line('{"md5": "ab", "caption_en": "", "bw": 64, "bh": 64}', 8, 16)
    assert isinstance(empty, Skipped) and not empty.fatal  # the reference drops these by design


def test_skip_policy_lists_exactly_the_bad_lines(tmp_path: Path) -> None:
    facts = write_acceptance_set(tmp_path)
    result = scan(tmp_path / "data.jsonl", policy="skip", progress=False)
    assert result.total == 18 and len(result.records) == 15
    skipped = {s.line: s.reason for s in result.skipped}
    assert set(skipped) == {facts["malformed"], facts["missing"], facts["truncated"]}
    assert "malformed JSON" in skipped[facts["malformed"]]
    assert "not found" in skipped[facts["missing"]]
    assert "truncated" in skipped[facts["truncated"]]
    line, caption = facts["json_caption"]
    assert next(r.caption for r in result.records if r.line == line) == caption
    assert all(p.is_file() for p in result.images)

    report = build_report(jsonl=result.jsonl, total=result.total, records=result.records,
                          skipped=result.skipped, batch_size=4, world=2)
    assert report["kept"] == 15 and report["total"] == 18
    assert [s["line"] for s in report["skipped"]] == sorted(skipped)
    assert report["buckets"] == {"32x32": 8, "48x32": 7}
    assert [b["bucket"] for b in report["small_buckets"]] == ["48x32"]  # 7 < 4 × 2
    text = summary(report)
    assert "15 kept" in text and "never trained" in text


def test_error_policy_names_the_first_bad_line(tmp_path: Path) -> None:
    write_acceptance_set(tmp_path)
    with pytest.raises(DataError, match=r"data\.jsonl:4: malformed JSON"):
        scan(tmp_path / "data.jsonl", policy="error", progress=False)


def test_error_policy_names_the_image(tmp_path: Path) -> None:
    facts = write_acceptance_set(tmp_path)
    lines = (tmp_path / "data.jsonl").read_text().splitlines()
    del lines[facts["malformed"] - 1]  # now the first bad entry is the missing image (line 8)
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:8: image not found .*ffff"):
        scan(tmp_path / "data.jsonl", policy="error", progress=False)
    (tmp_path / "data.jsonl").write_text("\n".join(lines[:7] + lines[8:]) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:10: unreadable image .*12a+\.jpg.*truncated"):
        scan(tmp_path / "data.jsonl", policy="error", progress=False)


def test_png_and_webp_are_found(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "p.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "w.webp")
    rows = [{"md5": m, "caption_en": "x", "bw": 16, "bh": 16} for m in ("p", "w")]
    (tmp_path / "data.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    result = scan(tmp_path / "data.jsonl", policy="error", progress=False)
    assert [p.suffix for p in result.images] == [".png", ".webp"]
