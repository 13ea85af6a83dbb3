"""bench/gpu_campaign.sh --dry-run: the GPU campaign's script runs end to end on CPU before a GPU is seen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_campaign_dry_run(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["bash", "bench/gpu_campaign.sh", "--dry-run", "--out", str(out), "--wheels",
                           str(tmp_path / "no-wheels")], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "campaign.json").read_text())
    phases = {p["phase"]: p for p in summary["phases"]}
    for name in ("environment", "ceilings", "correctness tests", "kernel bandwidth", "done"):
        assert name in phases, sorted(phases)
    assert phases["correctness tests"]["rc"] == 0 and phases["kernel bandwidth"]["rc"] == 0
    assert summary["ceilings"]["bf16_matmul_tflops"] > 0 and summary["ceilings"]["copy_gb_per_s"] > 0
    assert summary["skipped"] == []

    # Each row was appended as it was measured, in priority order, compile time apart from step time.
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["batch"]) for r in rows] == [("reference", 4), ("fast", 4), ("reference-no_ckpt", 4),
                                                       ("fast", 8), ("reference_encode", 4)]
    for r in rows:
        assert r["rounds"] == 1 and r["ms_per_step"] > 0 and r["first_step_s"] > 0 and r["cpu_peak_bytes"] > 0
    final = json.loads((out / "step-cpu-dry-run.json").read_text())
    assert final["rows"] == rows and final["environment"]["commit"]
    table = (out / "step.md").read_text()
    assert "commit" in table and "reference-no_ckpt" in table and "| fast |" in table
