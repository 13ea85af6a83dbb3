"""The state layout of torchao's low-bit AdamW, for planning only.

torchao's `AdamW8bit` / `AdamWFp8` read tensor values while they quantize (and compile their step),
so they cannot run on fake tensors. This stand-in allocates the same state per parameter — for
parameters of at least 4096 elements two moments of 1-byte codes (uint8 / float8 e4m3) plus one fp32
scale per 256-element block, else two fp32 moments — and updates the parameter in place. torchao's
compiled per-parameter step keeps its dequantized temporaries in registers; none are modelled.
"""

from __future__ import annotations

import torch

BLOCK = 256
MIN_QUANTIZED = 4096


class LowBitAdamWStates(torch.optim.Optimizer):
    def __init__(self, params, choice: str, *, lr: float) -> None:
        if choice not in ("adamw8bit", "adamw_fp8"):
            raise ValueError(f"accel.optimizer: no low-bit layout for {choice!r}")
        self.code_dtype = torch.uint8 if choice == "adamw8bit" else torch.float8_e4m3fn
        super().__init__(params, {"lr": lr})

    def _moment(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p.numel() < MIN_QUANTIZED:
            return {"value": torch.zeros_like(p, dtype=torch.float32)}
        return {"codes": torch.zeros(p.shape, dtype=self.code_dtype, device=p.device),
                "scale": torch.zeros((p.numel() + BLOCK - 1) // BLOCK, dtype=torch.float32, device=p.device)}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    for name in ("exp_avg", "exp_avg_sq"):
                        for key, value in self._moment(p).items():
                            state[f"{name}.{key}"] = value
                state["step"].add_(1)
                p.add_(p.grad, alpha=-group["lr"])
