"""`accel.optimizer`: AdamW with full-precision or torchao low-bit states (built by `train/optim.py`).

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

from typing import Literal

import torch

OptimizerChoice = Literal["adamw", "adamw8bit", "adamw_fp8"]


def low_bit_adamw(choice: str) -> type[torch.optim.Optimizer]:
    """The torchao optimizer class of `accel.optimizer = choice` (`adamw8bit` or `adamw_fp8`);
    `soar_fast.train.optim.build_optimizer` builds it with the `[optim]` hyper-parameters."""
    if choice in ("adamw8bit", "adamw_fp8"):
        # Imported here: torchao's import costs ~2 s and prints native-extension warnings on CPU.
        from torchao.optim import AdamW8bit, AdamWFp8

        return AdamW8bit if choice == "adamw8bit" else AdamWFp8
    raise ValueError(f"accel.optimizer must be adamw, adamw8bit or adamw_fp8; got {choice!r}")
