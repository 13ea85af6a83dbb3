"""AdamW and the learning-rate schedules (`[optim]`), stepped once per optimizer step.

The schedule horizon is `train.max_steps` optimizer steps on every world size: the reference's
scheduler is stretched by the number of GPUs under DeepSpeed (docs/objective.md §8); this one is not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from soar_fast.config import OptimConfig


def build_optimizer(optim_cfg: OptimConfig, params: Iterable[torch.nn.Parameter], *, state: str = "adamw",
                    device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """AdamW with `[optim]`'s betas, eps and decoupled weight decay over the trainable `params`.
    `state` is the resolved `accel.optimizer`: "adamw" keeps fp32 moments; the low-bit variants are
    torchao's (`soar_fast.accel.optim`)."""
    params = [p for p in params if p.requires_grad]
    kwargs = {"lr": optim_cfg.lr, "betas": tuple(optim_cfg.betas), "eps": optim_cfg.eps,
              "weight_decay": optim_cfg.weight_decay}
    if state == "adamw":
        # fused: one kernel for every parameter on CUDA; CPU keeps the default foreach path.
        return torch.optim.AdamW(params, fused=torch.device(device).type == "cuda" or None, **kwargs)
    from soar_fast.accel.optim import low_bit_adamw

    return low_bit_adamw(state)(params, **kwargs)


def lr_lambda(optim_cfg: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR after `step` optimizer steps (diffusers' schedule shapes)."""
    warmup = max(int(optim_cfg.lr_warmup_steps), 0)
    kind = optim_cfg.lr_scheduler
    total = max(int(max_steps), 1)

    def ramp(step: int) -> float | None:
        return step / warmup if step < warmup else None

    def constant(step: int) -> float:
        return 1.0

    def constant_with_warmup(step: int) -> float:
        r = ramp(step)
        return 1.0 if r is None else r

    def cosine(step: int) -> float:
        r = ramp(step)
        if r is not None:
            return r
        progress = (step - warmup) / max(total - warmup, 1)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    def linear(step: int) -> float:
        r = ramp(step)
        if r is not None:
            return r
        return max(0.0, (total - step) / max(total - warmup, 1))

    table = {"constant": constant, "constant_with_warmup": constant_with_warmup, "cosine": cosine,
             "linear": linear}
    if kind not in table:
        raise ValueError(f"optim.lr_scheduler: unknown schedule {kind!r}")
    return table[kind]


def build_lr_scheduler(optim_cfg: OptimConfig, optimizer: torch.optim.Optimizer,
                       max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` whose state_dict holds only numbers, so it loads with `weights_only=True`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim_cfg, max_steps))
