"""`accel.optimizer`: AdamW with full-precision or torchao low-bit states.

- `adamw`: `torch.optim.AdamW` (fp32 states, 8 B/param); `fused=True` on CUDA (one kernel for all
  parameters), the default foreach implementation elsewhere.
- `adamw8bit`: `torchao.optim.AdamW8bit`, block-wise quantized moments (2 B/param, −6 B/param:
  ≈15 GB less for SD3.5-M's 2.5B parameters).
- `adamw_fp8`: `torchao.optim.AdamWFp8`, float8 e4m3 moments (2 B/param).
torchao compiles its per-parameter step on first use (tens of seconds on CPU; cached afterwards),
and keeps tensors under 4096 elements in full precision. Low-bit states change the numbers: they
are off by default and never used by the equivalence tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerChoice = Literal["adamw", "adamw8bit", "adamw_fp8"]


def build_optimizer(params: Iterable, choice: OptimizerChoice, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 0.0,
                    device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """The optimizer for `accel.optimizer = choice` with the `[optim]` hyper-parameters."""
    device = torch.device(device)
    kwargs = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
    if choice == "adamw":
        return torch.optim.AdamW(params, fused=device.type == "cuda" or None, **kwargs)
    if choice in ("adamw8bit", "adamw_fp8"):
        # Imported here: torchao's import costs ~2 s and prints native-extension warnings on CPU.
        from torchao.optim import AdamW8bit, AdamWFp8

        cls = AdamW8bit if choice == "adamw8bit" else AdamWFp8
        return cls(params, **kwargs)
    raise ValueError(f"accel.optimizer must be adamw, adamw8bit or adamw_fp8; got {choice!r}")
