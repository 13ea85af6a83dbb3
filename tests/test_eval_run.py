"""`soar-fast eval` / `sample` end to end on the tiny pipeline and the tiny CLIP (CPU, seconds)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from soar_fast.cli import main as cli_main
from soar_fast.config_io import load_config
from soar_fast.eval.run import main_eval
from soar_fast.eval.sample import main_sample
from tests.test_eval_aggregate import write_stand_in_detector

SETS = Path(__file__).resolve().parents[2] / "shared" / "eval-prompts"
needs_sets = pytest.mark.skipif(not SETS.is_dir(), reason=f"prompt sets not found at {SETS}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from soar_fast.eval.tiny_clip import export_tiny_clip
    from soar_fast.models.export import export_tiny_pipeline

    root = tmp_path_factory.mktemp("eval-models")
    export_tiny_pipeline(str(root / "model"))
    export_tiny_clip(str(root / "clip"))
    return str(root / "model"), str(root / "clip")


def _fast(model: str, out: Path, *extra: str) -> list[str]:
    return [f"--model.path={model}", "--eval.steps=2", "--eval.resolution=32", "--eval.max_sequence_length=8",
            "--eval.batch_size=4", "--log.progress=false", f"--run.output_dir={out}", *extra]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@needs_sets
def test_eval_drawbench_writes_images_results_and_averages(folders, tmp_path):
    model, clip = folders
    out = tmp_path / "eval"
    cfg = load_config(None, _fast(model, out, "--eval.dataset=drawbench",
                                  f"--eval.prompts={SETS / 'drawbench/test.txt'}", "--eval.limit=3",
                                  "--eval.images_per_prompt=2", "--eval.scorers=clipscore,aesthetic",
                                  f"--eval.weights.clipscore={clip}", f"--eval.weights.aesthetic={clip}"))
    assert main_eval(cfg) == 0
    recs = _lines(out / "evaluation_results.jsonl")
    assert [(r["row"], r["image_index"], r["seed"]) for r in recs] == [(r, k, 2 * r + k) for r in range(3)
                                                                       for k in range(2)]
    for r in recs:
        assert (out / r["image_path"]).is_file() and set(r["scores"]) == {"clipscore", "aesthetic"}
    avg = json.loads((out / "average_scores.json").read_text())
    assert math.isfinite(avg["clipscore"])
    assert avg["clipscore"] == pytest.approx(sum(r["scores"]["clipscore"] for r in recs) / 6)
    assert avg["run"]["rows"] == 3 and avg["run"]["images"] == 6 and "avg" not in avg
    assert "| clipscore |" in (out / "summary.md").read_text()
    assert (out / "grid.png").is_file()


@needs_sets
def test_eval_geneval_through_the_external_command(folders, tmp_path):
    model, _ = folders
    script = write_stand_in_detector(tmp_path / "detector.py", "{'correct': meta['tag'] == 'counting'}")
    out = tmp_path / "geneval"
    cfg = load_config(None, _fast(model, out, "--eval.dataset=geneval",
                                  f"--eval.prompts={SETS / 'geneval/test_metadata.jsonl'}", "--eval.limit=5",
                                  "--eval.scorers=geneval",
                                  f"--eval.geneval_command={sys.executable} {script} {{images}} {{results}}"))
    assert main_eval(cfg) == 0
    recs = _lines(out / "evaluation_results.jsonl")
    tags = [r["metadata"]["tag"] for r in recs]
    assert (out / "images/00000/samples/0000.png").is_file()
    assert json.loads((out / "images/00000/metadata.jsonl").read_text())["tag"] == tags[0]
    avg = json.loads((out / "average_scores.json").read_text())
    present = sorted(set(tags))
    assert avg["geneval"] == pytest.approx(sum(t == "counting" for t in present) / len(present))
    assert set(avg["geneval_tasks"]) == set(present)


def test_sample_writes_pngs_grid_and_index_reproducibly(folders, tmp_path):
    model, _ = folders
    prompts = ["a red circle", "a cat on a blue square", "two dogs"]
    runs = []
    for name, extra in (("a", []), ("b", ["--eval.batch_size=1"])):
        out = tmp_path / name
        cfg = load_config(None, _fast(model, out, "--eval.images_per_prompt=2", *extra))
        cfg.eval.prompt_list = prompts
        assert main_sample(cfg) == 0
        index = _lines(out / "index.jsonl")
        assert [(r["row"], r["image_index"]) for r in index] == [(r, k) for r in range(3) for k in range(2)]
        assert (out / "grid.png").is_file()
        runs.append([np.asarray(Image.open(out / r["image_path"]), dtype=np.int16) for r in index])
    # Same seeds, different batching: the same pictures (an 8-bit level of rounding slack).
    for x, y in zip(*runs):
        assert np.abs(x - y).max() <= 1


def test_cli_reports_missing_weights_in_one_line(folders, tmp_path, capsys):
    model, _ = folders
    code = cli_main(["eval", *_fast(model, tmp_path / "x", "--eval.prompt_list=a cat", "--eval.scorers=pickscore")])
    assert code == 2
    err = capsys.readouterr().err
    assert "scorer 'pickscore': set eval.weights.pickscore" in err and not os.path.exists(tmp_path / "x" / "images")
