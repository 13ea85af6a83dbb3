"""GPU telemetry through nvidia-ml-py (NVML): memory, utilisation, power.

Absent without noise where there is nothing to read (no CUDA device, no driver, no `pynvml`):
`GpuTelemetry.open` returns None and `TelemetrySampler` records nothing. Sampling runs on a
background thread and never touches the CUDA stream, so it adds no host sync to the step.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch


@dataclass
class GpuSample:
    memory_used_bytes: int
    utilization_pct: float
    power_w: float


def _nvml_index(device: torch.device) -> int:
    """NVML numbers devices physically; CUDA numbers the visible ones (CUDA_VISIBLE_DEVICES)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


class GpuTelemetry:
    """One NVML device handle."""

    def __init__(self, nvml, handle, name: str) -> None:
        self._nvml, self._handle, self.name = nvml, handle, name

    @classmethod
    def open(cls, device: torch.device | str | int = 0) -> GpuTelemetry | None:
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(_nvml_index(device))
            name = pynvml.nvmlDeviceGetName(handle)
            return cls(pynvml, handle, name.decode() if isinstance(name, bytes) else name)
        except Exception:  # noqa: BLE001 - no driver/library/permission: telemetry is optional
            return None

    def sample(self) -> GpuSample | None:
        try:
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            power = self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            return GpuSample(int(mem.used), float(util.gpu), float(power))
        except Exception:  # noqa: BLE001 - a GPU lost or reset mid-run must not stop training
            return None


@dataclass
class TelemetrySummary:
    samples: int = 0
    memory_used_max_bytes: int = 0
    utilization_mean_pct: float = 0.0
    power_mean_w: float = 0.0
    power_max_w: float = 0.0
    device_name: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TelemetrySampler:
    """Context manager sampling a GPU every `interval_s` on a thread; `.summary` after exit.

    On a machine without a GPU it is a no-op and `.summary` is None.
    """

    device: torch.device | str | int = 0
    interval_s: float = 0.1
    summary: TelemetrySummary | None = None
    _samples: list = field(default_factory=list)

    def __enter__(self):
        self._gpu = GpuTelemetry.open(self.device)
        self._stop = threading.Event()
        self._thread = None
        if self._gpu is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-telemetry", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            s = self._gpu.sample()
            if s is not None:
                self._samples.append(s)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        s = self._samples
        if s:
            self.summary = TelemetrySummary(
                samples=len(s), memory_used_max_bytes=max(x.memory_used_bytes for x in s),
                utilization_mean_pct=sum(x.utilization_pct for x in s) / len(s),
                power_mean_w=sum(x.power_w for x in s) / len(s), power_max_w=max(x.power_w for x in s),
                device_name=self._gpu.name)
