"""The toy experiment (bench/toy, docs/experiments.md) end to end at its smoke size: every stage runs
and the report holds what the full size reports. Nothing is meant to be learnt at this size."""

from __future__ import annotations

import json

import pytest

from bench.toy import report
from bench.toy.experiment import ARMS, flops_ratio, run_experiment
from bench.toy.protocol import FULL, SMOKE


def test_flops_matched_sft_gets_soar_s_compute():
    ratio = flops_ratio(FULL)
    # main B with grad vs main B + K·B aux with grad and the B-row no-grad rollout forward
    assert FULL.trajectory_length + 1 < ratio < FULL.trajectory_length + 2


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("toy")
    result = run_experiment(SMOKE, work, log=lambda *_: None)
    return work, result, report.write(result, work / "results")


def test_every_arm_and_seed_trained_and_scored(smoke):
    _, result, _ = smoke
    names = {r["name"] for r in result["runs"]}
    assert names == {f"{arm}-s{seed}" for arm in ARMS for seed in SMOKE.seeds}
    by_name = {r["name"]: r for r in result["runs"]}
    assert by_name["sft_flops-s1"]["steps"] == round(SMOKE.post_steps * result["flops_ratio"])
    for rec in [result["base"], *result["runs"]]:
        assert len(rec["scores"]) == len(rec["checkpoints"]) >= 1
        for point in rec["scores"]:
            assert set(point) == {"step"} | {f"cfg={w:g}" for w in SMOKE.score_cfgs}
            for w in SMOKE.score_cfgs:
                score = point[f"cfg={w:g}"]
                assert 0.0 <= score["overall"] <= 1.0 and score["per_category"]
    soar = by_name["soar-s1"]["losses"][-1]
    sft = by_name["sft-s1"]["losses"][-1]
    assert soar.get("loss_aux", 0.0) > 0.0 and not sft.get("loss_aux")


def test_diagnose_measures_each_arm_against_the_base(smoke):
    _, result, _ = smoke
    assert len(result["diagnose"]) == len(SMOKE.seeds)
    for diag in result["diagnose"]:
        assert [c["label"] for c in diag["checkpoints"]] == ["base", *ARMS]
        for entry in diag["checkpoints"]:
            assert [round(pt["sigma_start"], 2) for pt in entry["points"]] != []
            assert all(pt["drift"] >= 0.0 for pt in entry["points"])


def test_report_files(smoke):
    work, _result, files = smoke
    names = {f.name for f in files}
    assert names == {"results.json", "results.md", "score_vs_compute.png", "drift_vs_sigma.png"}
    saved = json.loads((work / "results" / "results.json").read_text())
    assert saved["commit"] and saved["machine"]["cpu_count"] and saved["wall_s"] > 0
    assert set(saved["summary"]) == {"base", *ARMS}
    md = (work / "results" / "results.md").read_text()
    for label in report.LABELS.values():
        assert f"| {label} |" in md
