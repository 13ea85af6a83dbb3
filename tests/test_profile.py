"""`soar-fast profile`: a Chrome/Perfetto trace with one named range per phase, and the phase table."""

from __future__ import annotations

import json
import re

from soar_fast.cli import main
from soar_fast.train.phases import PHASES


def test_profile_writes_trace_and_phase_table(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["profile", "--steps", "2", f"--run.output_dir={out}", "--run.device=cpu", "--data.demo_size=8",
                 "--soar.trajectory_length=2", "--log.progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    trace = out / "profile" / "trace.json"
    assert f"trace: {trace}" in printed
    events = json.loads(trace.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    # The demo reads its cache (no encoder runs), so every phase but "encode" is in every step.
    ran = [p for p in PHASES if p != "encode"]
    assert set(ran) | {"step"} <= names, sorted(set(ran) - names)
    assert sum(e.get("name") == "step" for e in events) == 2

    rows = dict(re.findall(r"^(\w[\w ]*?)\s+(\d+\.\d+)\s+\d+\.\d%$", printed, flags=re.MULTILINE))
    assert set(ran) | {"other", "step"} <= set(rows), printed
    ms = {name: float(value) for name, value in rows.items()}
    assert all(ms[p] > 0 for p in ran)
    parts = sum(ms[p] for p in ran) + ms["other"]
    assert abs(parts - ms["step"]) <= 0.02 * ms["step"] + 0.05, printed  # the table adds up to the step
