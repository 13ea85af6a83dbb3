"""Run outputs of the log steps: `metrics.jsonl`, TensorBoard scalars and `plots/loss.png`.

Only `[log]` is read. On resume every record after the resumed step is dropped (from the JSONL and,
through `purge_step`, from TensorBoard), so a resumed run's files read as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from soar_fast.config import LogConfig

PLOTTED = ("loss", "loss_main", "loss_aux")


class MetricsLog:
    def __init__(self, output_dir: str, log_cfg: LogConfig, *, start_step: int = 0) -> None:
        self.output_dir = output_dir
        self.log_cfg = log_cfg
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.history: list[dict[str, Any]] = [r for r in _read_jsonl(self.path) if r.get("step", 0) <= start_step]
        os.makedirs(output_dir, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        self.writer = None
        if log_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                        purge_step=start_step + 1 if start_step > 0 else None)

    def log(self, record: dict[str, Any]) -> None:
        """Append one logged step (`record["step"]` plus scalars)."""
        self.history.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.flush()

    def plot(self) -> str | None:
        """Redraw `plots/loss.png` (loss, main, aux vs step); returns its path, None when off or empty."""
        if not self.log_cfg.plot or not self.history:
            return None
        # Figure + Agg canvas directly: no pyplot, so no global backend state and no display needed.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        steps = [r["step"] for r in self.history]
        for key in PLOTTED:
            values = [r.get(key) for r in self.history]
            if all(v is not None for v in values):
                ax.plot(steps, values, label=key, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        folder = os.path.join(self.output_dir, "plots")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "loss.png")
        tmp = f"{path}.tmp-{os.getpid()}.png"
        fig.savefig(tmp)
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    break  # a line cut by a crash ends the readable history
    return records
