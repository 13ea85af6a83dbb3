"""The scheduler's discrete sigma grid and the reference's two index rules on it (docs/objective.md §2)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


class SigmaGrid:
    """The N-point shifted training grid of `FlowMatchEulerDiscreteScheduler.__init__`.

    `sigmas`, `timesteps`: float32 (N,), descending, `sigmas[0] == 1`, no trailing 0; bit-identical to
    diffusers' tables. `at` and `t_of` run on the device of their input: the tables are copied there
    once and cached, so neither ever synchronises with the host.
    """

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 3.0) -> None:
        n = int(num_train_timesteps)
        assert n >= 2, f"num_train_timesteps must be >= 2, got {n}"
        self.num_train_timesteps = n
        self.shift = float(shift)
        # The same float32 ops in the same order as diffusers, so the tables agree bit for bit.
        ts = torch.from_numpy(np.linspace(1, n, n, dtype=np.float32)[::-1].copy()).to(torch.float32)
        sigmas = ts / n
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        cpu = torch.device("cpu")
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {
            cpu: (sigmas, sigmas * n, -sigmas)
        }
        self._device = cpu
        # Read once here, on the host, so flow_sde never syncs for it.
        self.sigma_hat_at_one = float(sigmas[1])

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> SigmaGrid:
        """From a diffusers scheduler config dict (`scheduler/scheduler_config.json`)."""
        if config.get("use_dynamic_shifting", False):
            # diffusers then leaves the __init__ grid unshifted and shifts per resolution at sampling
            # time; SD3/SD3.5 training never uses it, so refuse rather than guess.
            raise ValueError("scheduler config: use_dynamic_shifting=True is not supported for training")
        return cls(num_train_timesteps=config.get("num_train_timesteps", 1000),
                   shift=config.get("shift", 1.0))

    def __repr__(self) -> str:
        return f"SigmaGrid(num_train_timesteps={self.num_train_timesteps}, shift={self.shift})"

    def to(self, device: torch.device | str) -> SigmaGrid:
        """A view of this grid whose `.sigmas`/`.timesteps` live on `device` (the cache is shared)."""
        other = object.__new__(SigmaGrid)
        other.__dict__.update(self.__dict__)
        other._device = torch.device(device)
        other.tables(other._device)
        return other

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigmas, timesteps, -sigmas) on `device`, copied there on first use."""
        if device not in self._tables:
            cpu = self._tables[torch.device("cpu")]
            self._tables[device] = tuple(x.to(device) for x in cpu)
        return self._tables[device]

    @property
    def sigmas(self) -> torch.Tensor:
        return self.tables(self._device)[0]

    @property
    def timesteps(self) -> torch.Tensor:
        return self.tables(self._device)[1]

    def index_of_t(self, t: torch.Tensor) -> torch.Tensor:
        """k = clamp(floor((1 − t)·N), 0, N−1), in float32 exactly like the reference (int64, t's shape)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        k = torch.floor((1.0 - t) * self.num_train_timesteps).long()
        return k.clamp(0, self.num_train_timesteps - 1)

    def at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma, timestep) of the grid point for unshifted time `t` (1 = noise); both float32, t's shape."""
        t = torch.as_tensor(t, dtype=torch.float32)
        sigmas, timesteps, _ = self.tables(t.device)
        k = self.index_of_t(t)
        return sigmas[k], timesteps[k]

    def t_of(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = 1 − j/N for j = the first grid index with σ_j ≤ σ (clamped); float32, sigma's shape."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        _, _, neg = self.tables(sigma.device)
        j = torch.searchsorted(neg, (-sigma).contiguous(), side="left")
        j = j.clamp(0, self.num_train_timesteps - 1)
        return 1.0 - j.to(torch.float32) / self.num_train_timesteps
