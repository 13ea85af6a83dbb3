"""The toy experiment's JSON, markdown table and plots (bench/results/toy/)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ARMS = ("base", "sft", "soar", "sft_flops")
LABELS = {"base": "base (pretrained SFT)", "sft": "SFT, same steps", "soar": "SOAR",
          "sft_flops": "SFT, same FLOPs"}


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _final(record: dict) -> dict:
    return record["scores"][-1]


def summary(result: dict) -> dict:
    """{arm: {cfg: {category: {"mean", "sd", "n"}}}} over seeds, final checkpoints."""
    by_arm: dict[str, list[dict]] = {"base": [_final(result["base"])]}
    for rec in result["runs"]:
        by_arm.setdefault(rec["arm"], []).append(_final(rec))
    out: dict = {}
    for arm, finals in by_arm.items():
        out[arm] = {}
        for cfg in (k for k in finals[0] if k != "step"):
            cats = list(finals[0][cfg]["per_category"]) + ["overall"]
            out[arm][cfg] = {}
            for cat in cats:
                vals = [f[cfg]["overall"] if cat == "overall" else f[cfg]["per_category"][cat] for f in finals]
                out[arm][cfg][cat] = {"mean": statistics.fmean(vals), "n": len(vals),
                                      "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def markdown(result: dict, summ: dict) -> str:
    p = result["protocol"]
    cfgs = list(summ["base"])
    cats = list(summ["base"][cfgs[0]])
    lines = [f"# SOAR vs SFT at toy scale ({p['name']} protocol)", "",
             (f"commit `{result['commit']}`, {result['date']}, {result['machine']['processor']} "
             f"({result['machine']['cpu_count']} cores), torch {result['machine']['torch']}; "
             f"wall time {result['wall_s'] / 60:.1f} min."), "",
             (f"Detector accuracy on {p['heldout_prompts']} held-out prompts, {p['sampling_steps']}-step Euler "
             f"sampling, final checkpoints; mean ± sd over seeds {list(p['seeds'])}. Base: {p['base_steps']} SFT "
             f"steps; post-training: {p['post_steps']} steps (SFT same FLOPs: "
             f"{round(p['post_steps'] * result['flops_ratio'])}), lr {p['post_lr']}, batch {p['batch_size']}, "
             f"K = {p['trajectory_length']}, CFG {p['cfg_scale']}."), ""]
    for cfg in cfgs:
        lines += [f"## {cfg.replace('cfg=', 'CFG ')}", "", "| run | " + " | ".join(cats) + " |",
                  "|---|" + "---:|" * len(cats)]
        for arm in ARMS:
            if arm in summ:
                cells = [f"{summ[arm][cfg][c]['mean']:.3f} ± {summ[arm][cfg][c]['sd']:.3f}" for c in cats]
                lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Exposure bias (diagnose, mean over seeds)", "",
              "| run | " + " | ".join(f"drift σ={s:g}" for s in p["diagnose_sigmas"]) + " |",
              "|---|" + "---:|" * len(p["diagnose_sigmas"])]
    for arm, rows in drift_table(result).items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(f"{v:.4f}" for v in rows["drift"]) + " |")
    lines += ["", "| run | " + " | ".join(f"v-err TF/SR σ={s:g}" for s in p["diagnose_sigmas"]) + " |",
              "|---|" + "---:|" * len(p["diagnose_sigmas"])]
    for arm, rows in drift_table(result).items():
        lines.append(f"| {LABELS[arm]} | " + " | ".join(f"{a:.3f}/{b:.3f}" for a, b in
                                                        zip(rows["tf_error"], rows["sr_error"])) + " |")
    return "\n".join(lines) + "\n"


def drift_table(result: dict) -> dict:
    """{arm: {"sigma", "drift", "tf_error", "sr_error"}} averaged over the seeds' diagnose runs;
    errors are the guided velocity's relative squared error (teacher-forced at the end sigma vs
    after the self-rollout)."""
    acc: dict[str, list[list[dict]]] = {}
    for diag in result["diagnose"]:
        for entry in diag["checkpoints"]:
            acc.setdefault(entry["label"], []).append(entry["points"])
    out = {}
    for arm in ARMS:
        if arm not in acc:
            continue
        runs_ = acc[arm]
        n = len(runs_[0])
        out[arm] = {"sigma": [runs_[0][g]["sigma_start"] for g in range(n)],
                    "drift": [statistics.fmean(r[g]["drift"] for r in runs_) for g in range(n)],
                    "tf_error": [statistics.fmean(r[g]["teacher_forced_end"]["velocity_error_cfg"] for r in runs_)
                                 for g in range(n)],
                    "sr_error": [statistics.fmean(r[g]["self_rollout"]["velocity_error_cfg"] for r in runs_)
                                 for g in range(n)]}
    return out


def _curves(result: dict, cfg: str) -> dict:
    """{arm: (compute in SFT-step units, mean overall)} per checkpoint, the base as compute 0."""
    ratio = result["flops_ratio"]
    base = _final(result["base"])[cfg]["overall"]
    per: dict[str, dict[float, list[float]]] = {}
    for rec in result["runs"]:
        scale = ratio if rec["arm"] == "soar" else 1.0
        for point in rec["scores"]:
            per.setdefault(rec["arm"], {}).setdefault(point["step"] * scale, []).append(point[cfg]["overall"])
    return {arm: ([0.0] + sorted(pts), [base] + [statistics.fmean(pts[x]) for x in sorted(pts)])
            for arm, pts in per.items()}


def plots(result: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = [k for k in _final(result["base"]) if k != "step"]
    fig, axes = plt.subplots(1, len(cfgs), figsize=(5 * len(cfgs), 3.6), squeeze=False)
    for ax, cfg in zip(axes[0], cfgs):
        for arm, (x, y) in _curves(result, cfg).items():
            ax.plot(x, y, marker="o", label=LABELS[arm])
        ax.set_xlabel("post-training compute (SFT steps' FLOPs)")
        ax.set_ylabel("detector overall (held-out)")
        ax.set_title(cfg.replace("cfg=", "CFG "))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    score_png = folder / "score_vs_compute.png"
    fig.savefig(score_png, dpi=110)
    plt.close(fig)

    table = drift_table(result)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, rows in table.items():
        axes[0].plot(rows["sigma"], rows["drift"], marker="o", label=LABELS[arm])
        line, = axes[1].plot(rows["sigma"], rows["sr_error"], marker="o", label=f"{LABELS[arm]}: self-rollout")
        axes[1].plot(rows["sigma"], rows["tf_error"], ls="--", color=line.get_color(),
                     label=f"{LABELS[arm]}: teacher-forced")
    axes[0].set_title("drift of the reached state")
    axes[0].set_ylabel("‖ẑ − z_σe‖ / ‖z1 − z0‖")
    axes[1].set_title("guided velocity error at σ_end")
    axes[1].set_ylabel("‖v − (z1 − z0)‖² / ‖z1 − z0‖²")
    for ax in axes:
        ax.set_xlabel("start sigma")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    drift_png = folder / "drift_vs_sigma.png"
    fig.savefig(drift_png, dpi=110)
    plt.close(fig)
    return [score_png, drift_png]


def write(result: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    result = dict(result, commit=commit(), machine=machine(),
                  date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    summ = summary(result)
    result["summary"] = summ
    (folder / "results.json").write_text(json.dumps(result, indent=1))
    (folder / "results.md").write_text(markdown(result, summ))
    return [folder / "results.json", folder / "results.md", *plots(result, folder)]
