"""`diagnose.png`: the numbers of `diagnose_checkpoints` against sigma, one colour per checkpoint.

Four panels against the start sigma σs (several low starts share the grid's last sigma as their end, so
σs keeps them apart); every number is taken at the rollout's end sigma σe, on the true state z_σe
(teacher-forced, solid) and at the self-rollout's reached state ẑ (dashed): the conditional velocity
error, the correction error (SOAR's target), the drift of ẑ (one line), and the x0-prediction norm drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# (title, key of the state dicts or None for the drift, log scale allowed)
PANELS = (
    ("velocity error ‖v_c − (z1 − z0)‖² / ‖z1 − z0‖²", "velocity_error", True),
    ("correction error ‖v_c − (z − z0)/σ‖² / ‖z1 − z0‖²", "correction_error", True),
    ("drift ‖ẑ − z_σ‖ / ‖z1 − z0‖ after {n} Euler steps", None, True),
    ("x0-prediction norm drift ‖z − σ·v_c‖ / ‖z0‖ − 1", "x0_norm_drift", False),
)


def plot_diagnostics(result: Mapping[str, Any], path: str) -> str:
    """Draw `result` (the dict `diagnose_checkpoints` returns) to the PNG `path`; returns `path`."""
    # Figure + Agg canvas directly (as train/metrics.py): no pyplot, no global backend, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    s = result["settings"]
    fig = Figure(figsize=(18, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    for ax, (title, key, log_ok) in zip(axes, PANELS):
        values: list[float] = []
        for i, entry in enumerate(result["checkpoints"]):
            pts = sorted(entry["points"], key=lambda p: p["sigma_start"])
            x = [p["sigma_start"] for p in pts]
            style = {"color": f"C{i % 10}", "marker": "o", "markersize": 3}
            if key is None:
                ys = [[p["drift"] for p in pts]]
                ax.plot(x, ys[0], label=entry["label"], **style)
            else:
                ys = [[p["teacher_forced_end"][key] for p in pts], [p["self_rollout"][key] for p in pts]]
                ax.plot(x, ys[0], label=entry["label"], **style)
                ax.plot(x, ys[1], linestyle="--", **style)
            values += [v for y in ys for v in y]
        # Log where the values span a decade and are all positive (a perfect model's zeros stay visible).
        if log_ok and values and min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
        if key == "x0_norm_drift":
            ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_title(title.format(n=s["rollout_steps"]), fontsize=9)
        ax.set_xlabel("start sigma σs (numbers at the rollout's end σe)")
        ax.grid(True, alpha=0.3)
    styles = [Line2D([], [], color="0.3", label="teacher-forced (true state)"),
              Line2D([], [], color="0.3", linestyle="--", label="self-rollout (reached state)")]
    axes[0].legend(handles=axes[0].get_legend_handles_labels()[0] + styles, fontsize=7)
    fig.suptitle(f"exposure bias: rollout CFG {s['cfg_scale']:g}, S = {s['sampling_steps']}, "
                 f"{s['samples']} samples, seed {s['seed']}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
