"""The SOAR normalisation over every rank's supervision items: one all-reduce of two counts per step.

The objective (docs/objective.md §5) is a mean over all items of all W ranks:

    L = (Σ_r S_r) / N,   S_r = Σ main_r + λ·Σ aux_r,   N = max(Σ_r n_main_r + λ·Σ_r n_aux_r, 1).

The aux count is data-dependent (stochastic paths leave out samples with t1 <= 0), so N is known only
once every rank has laid out its aux rows. `global_counts` all-reduces [n_main_r, n_aux_r] right then,
before the aux forward, so the step can backpropagate each aux chunk as soon as it is computed. Each
rank then backpropagates

    ℓ_r = S_r · W / N        (`grad_scale(d) = W`)

and DDP/FSDP2 average gradients (÷W): the applied gradient is (1/W)·Σ_r ∇ℓ_r = Σ_r ∇S_r / N = ∇L,
exactly the one-process gradient of the global batch. The rank's detached S_r/N (and Σ main_r/N_main,
Σ aux_r/N_aux) are its shares of the global values: `sum_over_ranks` of them, on log steps only, gives
the global loss and the global mean main and aux items. No `.item()`: the collective runs on the
counts' device and N stays a tensor; one process (no group) skips it and keeps the ints.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..soar.loss import Count
from .env import Dist

__all__ = ["global_counts", "grad_scale", "sum_over_ranks"]


def global_counts(n_main: Count, n_aux: Count, d: Dist,
                  device: torch.device | None = None) -> tuple[Count, Count]:
    """(N_main, N_aux) summed over ranks: one all-reduce of a (2,) float32 tensor, no host sync.

    Counts are exact in float32 up to 2**24 items per step. Without a group (or W = 1) returns the
    inputs unchanged."""
    if not d.has_group or d.world == 1:
        return n_main, n_aux
    device = device or d.device
    buf = torch.stack([torch.as_tensor(n, dtype=torch.float32, device=device).reshape(()) for n in (n_main, n_aux)])
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf[0], buf[1]


def grad_scale(d: Dist) -> int:
    """The factor on each rank's loss that undoes the wrappers' gradient averaging (DDP, FSDP2: ÷W)."""
    return d.world if d.has_group else 1


def sum_over_ranks(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Σ over ranks of a detached tensor (a copy); for log steps, which sync anyway."""
    if not d.has_group or d.world == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
