"""GenEval aggregation (task mean, strict / non-strict) on hand-made rows, the external-command
interface, plain means and the summary table."""

from __future__ import annotations

import json
import sys

import pytest

from soar_fast.config import EvalConfig
from soar_fast.eval.aggregate import geneval_aggregate, mean_scores, summary_markdown
from soar_fast.eval.scorers.geneval import GenEval, image_key, read_results

# (tag, correct, strict_correct) per image: task sizes differ, so task mean != image mean.
ROWS = ([("single_object", 1, 1)] * 2
        + [("two_object", 1, 1)] + [("two_object", 0, 0)] * 3
        + [("counting", 1, 0)]
        + [("colors", 1, 1), ("colors", 1, 0), ("colors", 0, 0)]
        + [("position", 1, 1), ("position", 0, 0)]
        + [("color_attr", 1, 1)] * 4)


def test_geneval_overall_is_the_mean_of_the_six_task_accuracies():
    tags, correct, strict = zip(*ROWS)
    out = geneval_aggregate(tags, [bool(c) for c in correct], [bool(s) for s in strict])
    tasks = {"single_object": 1.0, "two_object": 0.25, "counting": 1.0, "colors": 2 / 3, "position": 0.5,
             "color_attr": 1.0}
    tasks_strict = {"single_object": 1.0, "two_object": 0.25, "counting": 0.0, "colors": 1 / 3,
                    "position": 0.5, "color_attr": 1.0}
    assert out["geneval_tasks"] == pytest.approx(tasks)
    assert list(out["geneval_tasks"]) == list(tasks)  # the canonical task order
    assert out["geneval_tasks_strict"] == pytest.approx(tasks_strict)
    assert out["geneval"] == pytest.approx(sum(tasks.values()) / 6)
    assert out["geneval_strict"] == pytest.approx(sum(tasks_strict.values()) / 6)
    assert out["geneval_image_accuracy"] == pytest.approx(11 / 16)
    assert out["geneval"] != pytest.approx(out["geneval_image_accuracy"])
    assert "geneval_missing_tasks" not in out


def test_geneval_with_missing_tasks_averages_those_present():
    out = geneval_aggregate(["counting", "counting", "position"], [True, False, True], score=[0.5, 0.25, 1.0])
    assert out["geneval"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["geneval_score"] == pytest.approx(1.75 / 3)
    assert "geneval_strict" not in out
    assert out["geneval_missing_tasks"] == ["single_object", "two_object", "colors", "color_attr"]


def test_mean_scores_skips_absent_values_and_never_sums_metrics():
    recs = [{"scores": {"clipscore": 0.2, "pickscore": 21.0}}, {"scores": {"clipscore": 0.4}}]
    out = mean_scores(recs, ["clipscore", "pickscore", "aesthetic"])
    assert out == pytest.approx({"clipscore": 0.3, "pickscore": 21.0})
    md = summary_markdown({**out, "geneval_tasks": {"counting": 0.5}}, {"dataset": "x", "rows": 2})
    assert "| clipscore | 0.3000 |" in md and "| counting | 0.5000 | - |" in md and "avg" not in md


def test_image_key_reads_geneval_filenames():
    assert image_key("/abs/out/images/00012/samples/0003.png") == (12, 3)
    assert image_key("images/00000/samples/0000.png") == (0, 0)
    with pytest.raises(ValueError):
        image_key("images/00000-00.png")


def write_stand_in_detector(path, verdict: str):
    """A stand-in detector with the official GenEval script's I/O: reads <row>/metadata.jsonl and
    <row>/samples/*.png, writes one JSON line per image: its filename plus `verdict`, a dict
    expression over `meta` (the row's metadata) and `folder` (the row's folder name)."""
    path.write_text(
        "import json, os, sys\n"
        "images, out = sys.argv[1], sys.argv[2]\n"
        "with open(out, 'w') as f:\n"
        "    for folder in sorted(os.listdir(images)):\n"
        "        meta = json.load(open(os.path.join(images, folder, 'metadata.jsonl')))\n"
        "        for name in sorted(os.listdir(os.path.join(images, folder, 'samples'))):\n"
        "            filename = os.path.join(images, folder, 'samples', name)\n"
        f"            f.write(json.dumps({{'filename': filename, **({verdict})}}) + '\\n')\n")
    return path


def test_geneval_external_command_round_trip(tmp_path):
    script = write_stand_in_detector(
        tmp_path / "detector.py",
        "{'tag': meta['tag'], 'correct': meta['tag'] != 'counting', "
        "'strict_correct': meta['tag'] != 'counting' and int(folder) % 2 == 0}")
    records = []
    for row, tag in enumerate(["counting", "colors", "colors"]):
        folder = tmp_path / "images" / f"{row:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"prompt": "p", "tag": tag}))
        (folder / "samples" / "0000.png").write_bytes(b"")
        records.append({"row": row, "image_index": 0, "metadata": {"tag": tag}, "scores": {},
                        "image_path": f"images/{row:05d}/samples/0000.png"})
    scorer = GenEval.load(EvalConfig(geneval_command=f"{sys.executable} {script} {{images}} {{results}}"), None)
    results = scorer.score_files(records, str(tmp_path))
    assert [r["geneval_correct"] for r in results] == [0.0, 1.0, 1.0]
    assert [r["geneval_strict_correct"] for r in results] == [0.0, 0.0, 1.0]
    for rec, res in zip(records, results):
        rec["scores"].update(res)
    out = scorer.aggregate(records)
    assert out["geneval"] == pytest.approx(0.5) and out["geneval_strict"] == pytest.approx(0.25)
    assert read_results(str(tmp_path / "geneval_results.jsonl"))[(2, 0)]["geneval_correct"] == 1.0


def test_geneval_command_failure_is_reported(tmp_path):
    scorer = GenEval.load(EvalConfig(geneval_command=f"{sys.executable} -c 'import sys; sys.exit(3)'"), None)
    with pytest.raises(RuntimeError, match="eval.geneval_command exited with 3"):
        scorer.score_files([], str(tmp_path))
