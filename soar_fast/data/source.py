"""The data → trainer seam: `TrainBatch` and the `TrainSource` protocol (`build.py` builds one).

The trainer never sees images, captions or encoders: it iterates already-encoded batches and draws
`z0 = latent_mean + latent_std·ε` from its own generator (the reference samples the VAE posterior
every step; caching the posterior's mean and std keeps that semantics).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class TrainBatch:
    """One step's inputs on one process; every sample comes from the same bucket.

    latent_mean: [B, C, h, w] float32, VAE posterior mean with shift and scaling applied.
    latent_std: [B, C, h, w] float32 posterior std (scaled), or None for a deterministic encoder.
    prompt_embeds: [B, 77 + S, D] (CLIP-L ‖ CLIP-G zero-padded to D, then T5; docs/data.md).
    pooled: [B, P] projected CLIP-L ‖ CLIP-G pooled outputs.
    lines: JSONL line number of each sample (provenance for logs and tests).
    flipped: whether each sample is the horizontally flipped image.
    bucket: (width, height) in pixels of the images this batch was encoded from.
    """

    latent_mean: torch.Tensor
    latent_std: torch.Tensor | None
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    lines: tuple[int, ...] = ()
    flipped: tuple[bool, ...] = ()
    bucket: tuple[int, int] = (0, 0)

    @property
    def batch_size(self) -> int:
        return self.latent_mean.shape[0]

    def to(self, device: torch.device | str, embed_dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> TrainBatch:
        """Move to `device`; embeddings optionally cast to `embed_dtype` (latents stay float32)."""
        def mv(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype, non_blocking=non_blocking)
        return replace(self, latent_mean=mv(self.latent_mean), latent_std=mv(self.latent_std),
                       prompt_embeds=mv(self.prompt_embeds, embed_dtype), pooled=mv(self.pooled, embed_dtype))


@runtime_checkable
class TrainSource(Protocol):
    """What the trainer consumes.

    Iteration is endless: it yields the rest of the current epoch, then moves to the next epoch by
    itself. `state_dict()` describes the position after the last batch handed out (not after what
    DataLoader workers prefetched), so `load_state_dict` + `iter` continues with exactly the batch
    that would have come next.
    """

    null_embeds: torch.Tensor       # [1, L, D] empty-prompt embedding (CFG's unconditional branch)
    null_pooled: torch.Tensor       # [1, P]
    latent_channels: int            # C of latent_mean
    batch_size: int                 # B per process
    steps_per_epoch: int            # batches per epoch, identical on every rank

    def __iter__(self) -> Iterator[TrainBatch]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class SourceInfo:
    """Where a source's samples come from, for logs and the run summary."""

    kind: str                      # "demo", "cache" or "on-the-fly"
    jsonl: str | None = None
    cache: str | None = None
    total: int = 0
    kept: int = 0
    buckets: dict[str, int] = field(default_factory=dict)
