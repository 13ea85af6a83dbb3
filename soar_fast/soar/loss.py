"""Per-sample weighted MSE and the SOAR normalisation over global supervision counts (docs/objective.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Count = int | float | torch.Tensor


@dataclass(frozen=True)
class LossParts:
    """One step's objective.

    loss: () float32, differentiable: (Σ main + λ·Σ aux) / max(N_main + λ·N_aux, 1).
    loss_main: () float32, detached: Σ main / max(N_main, 1), the mean main item (for logging).
    loss_aux: () float32, detached: Σ aux / max(N_aux, 1), the mean aux item (for logging).
    n_main, n_aux: the counts used in `loss` (ints, or () tensors when a caller passed global counts).
    """

    loss: torch.Tensor
    loss_main: torch.Tensor
    loss_aux: torch.Tensor
    n_main: Count
    n_aux: Count


def weighted_mse(pred: torch.Tensor, target: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) float32 per-sample `weight·mean((pred − target)²)` over non-batch dims; weight (B,) or None."""
    assert pred.shape == target.shape, (
        f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    err = (pred.to(torch.float32) - target.to(torch.float32)).pow(2)
    per_sample = err.reshape(pred.shape[0], -1).mean(dim=1)
    if weight is None:
        return per_sample
    assert weight.shape == (pred.shape[0],), (
        f"weight must be (B,) = ({pred.shape[0]},), got {tuple(weight.shape)}")
    return weight.to(torch.float32) * per_sample


def normaliser(n_main: Count, n_aux: Count, lambda_aux: float) -> Count:
    """max(N_main + λ·N_aux, 1), staying a tensor (no host sync) when the counts are tensors."""
    denom = n_main + lambda_aux * n_aux
    if isinstance(denom, torch.Tensor):
        return torch.clamp(denom.to(torch.float32), min=1.0)
    return max(denom, 1)


def soar_loss(main_sum: torch.Tensor, aux_sum: torch.Tensor, n_main: Count, n_aux: Count,
              lambda_aux: float) -> torch.Tensor:
    """(Σ main + λ·Σ aux) / max(N_main + λ·N_aux, 1): the mean over every supervision item of all ranks.

    main_sum, aux_sum: () this rank's sums of per-item losses. n_main, n_aux: the GLOBAL counts (ints, or
    tensors already all-reduced on device, so no host sync). Summing the ranks' gradients then gives the
    gradient of the global mean; under DDP's averaging, scale by the world size as the reference does.
    """
    return (main_sum + lambda_aux * aux_sum) / normaliser(n_main, n_aux, lambda_aux)
