"""`diagnose.png`: the numbers of `diagnose_checkpoints` against sigma, one colour per checkpoint.

Three panels against the start sigma σs (several low starts share the grid's last sigma as their end, so
σs keeps them apart); every number is taken at the rollout's end sigma σe: the conditional velocity
error teacher-forced on the true state z_σe (solid) and at the self-rollout's reached state (dashed);
the drift of the reached state; the x0-prediction norm drift, solid and dashed as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def plot_diagnostics(result: Mapping[str, Any], path: str) -> str:
    """Draw `result` (the dict `diagnose_checkpoints` returns) to the PNG `path`; returns `path`."""
    # Figure + Agg canvas directly (as train/metrics.py): no pyplot, no global backend, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(14, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_err, ax_drift, ax_x0 = fig.subplots(1, 3)
    colours = [f"C{i % 10}" for i in range(len(result["checkpoints"]))]
    values: dict[Any, list[float]] = {ax_err: [], ax_drift: []}
    for entry, colour in zip(result["checkpoints"], colours):
        pts = sorted(entry["points"], key=lambda p: p["sigma_start"])
        x = [p["sigma_start"] for p in pts]
        label = entry["label"]
        tf = [p["teacher_forced_end"]["velocity_error"] for p in pts]
        ro = [p["self_rollout"]["velocity_error"] for p in pts]
        ax_err.plot(x, tf, color=colour, marker="o", markersize=3, label=label)
        ax_err.plot(x, ro, color=colour, marker="o", markersize=3, linestyle="--")
        drift = [p["drift"] for p in pts]
        ax_drift.plot(x, drift, color=colour, marker="o", markersize=3, label=label)
        ax_x0.plot(x, [p["teacher_forced_end"]["x0_norm_drift"] for p in pts], color=colour, marker="o",
                   markersize=3, label=label)
        ax_x0.plot(x, [p["self_rollout"]["x0_norm_drift"] for p in pts], color=colour, marker="o",
                   markersize=3, linestyle="--")
        values[ax_err] += tf + ro
        values[ax_drift] += drift
    for ax, vals in values.items():
        # Log where the values span a decade and are all positive (a perfect model's zeros stay visible).
        if vals and min(vals) > 0 and max(vals) > 10 * min(vals):
            ax.set_yscale("log")
    s = result["settings"]
    ax_err.set_title("velocity error ‖v_c − (z1 − z0)‖² / ‖z1 − z0‖²", fontsize=9)
    ax_drift.set_title(f"drift ‖ẑ − z_σ‖ / ‖z1 − z0‖ after {s['rollout_steps']} Euler steps", fontsize=9)
    ax_x0.set_title("x0-prediction norm drift ‖z − σ·v_c‖ / ‖z0‖ − 1", fontsize=9)
    ax_x0.axhline(0.0, color="0.6", linewidth=0.8)
    for ax in (ax_err, ax_drift, ax_x0):
        ax.set_xlabel("start sigma σs (numbers at the rollout's end σe)")
        ax.grid(True, alpha=0.3)
    styles = [Line2D([], [], color="0.3", label="teacher-forced (on the ray)"),
              Line2D([], [], color="0.3", linestyle="--", label="self-rollout (reached state)")]
    ax_err.legend(handles=ax_err.get_legend_handles_labels()[0] + styles, fontsize=7)
    ax_drift.legend(fontsize=7)
    ax_x0.legend(handles=styles, fontsize=7)
    fig.suptitle(f"exposure bias: CFG {s['cfg_scale']:g}, S = {s['sampling_steps']}, "
                 f"{s['samples']} samples, seed {s['seed']}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path

