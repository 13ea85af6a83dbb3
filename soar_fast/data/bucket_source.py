"""The concrete `TrainSource`: a `BucketSampler` feeding a DataLoader, batches either read from the
cache or encoded here with the encoders this source owns (on-the-fly)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from soar_fast.data.datasets import collate
from soar_fast.data.sampler import BucketSampler
from soar_fast.data.source import SourceInfo, TrainBatch

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # only on-the-fly sources hold encoders; importing them costs seconds
    from soar_fast.data.encoders import Encoders


class _Steps:
    """The endless batch-sampler: from (epoch, cursor) on, one list of (epoch, index) refs per step."""

    def __init__(self, sampler: BucketSampler, epoch: int, cursor: int) -> None:
        self.sampler, self.epoch, self.cursor = sampler, epoch, cursor

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, cursor = self.epoch, self.cursor
        while True:
            for step in self.sampler.epoch(epoch)[cursor:]:
                yield [(epoch, i) for i in step.indices]
            epoch, cursor = epoch + 1, 0


class BucketSource:
    """See `TrainSource`. `encoders` given = on-the-fly (the dataset yields pixels and captions)."""

    def __init__(self, dataset: Dataset, sampler: BucketSampler, *, null_embeds: torch.Tensor,
                 null_pooled: torch.Tensor, latent_channels: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, num_workers: int = 0, encoders: Encoders | None = None,
                 info: SourceInfo | None = None) -> None:
        assert sampler.steps_per_epoch > 0, "a source needs at least one batch per epoch"
        self.dataset, self.sampler, self.encoders = dataset, sampler, encoders
        self.device, self.dtype, self.num_workers = device, dtype, num_workers
        self.null_embeds = null_embeds.to(device=device, dtype=dtype)
        self.null_pooled = null_pooled.to(device=device, dtype=dtype)
        self.latent_channels = latent_channels
        self.batch_size = sampler.batch_size
        self.steps_per_epoch = sampler.steps_per_epoch
        self.info = info or SourceInfo(kind="cache" if encoders is None else "on-the-fly")
        self.epoch, self.cursor = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.cursor = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "steps_per_epoch": self.steps_per_epoch,
                **self.sampler.identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Exact when seed, rank, world, batch size and data are unchanged. Otherwise (e.g. resuming
        on another number of ranks) the order cannot continue exactly: the saved epoch resumes at the
        same fraction of its steps, and a warning says so."""
        epoch, cursor = int(state["epoch"]), int(state["cursor"])
        diff = [f"{k} {state[k]} -> {v}" for k, v in self.sampler.identity().items() if k in state and state[k] != v]
        if diff:
            log.warning("data position restored approximately (%s): epoch %d resumes at the same fraction",
                        ", ".join(diff), epoch)
            saved_steps = max(int(state.get("steps_per_epoch", self.steps_per_epoch)), 1)
            cursor = min(cursor * self.steps_per_epoch // saved_steps, self.steps_per_epoch - 1)
        self.epoch, self.cursor = epoch, cursor

    def __iter__(self) -> Iterator[TrainBatch]:
        steps = _Steps(self.sampler, self.epoch, self.cursor)
        loader = DataLoader(self.dataset, batch_sampler=steps, num_workers=self.num_workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda")
        for raw in loader:
            batch = self._batch(raw)
            self._advance(raw["epoch"][0])  # the position after this batch, not after the prefetched ones
            yield batch

    def _advance(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.cursor = epoch, 0
        self.cursor += 1
        if self.cursor >= self.steps_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0

    def _batch(self, raw: dict[str, Any]) -> TrainBatch:
        dev, nb = self.device, self.device.type == "cuda"
        if self.encoders is None:
            mean, std = raw["latent_mean"], raw["latent_std"]
            embeds, pooled = raw["prompt_embeds"], raw["pooled"]
        else:
            mean, std = self.encoders.encode_pixels(raw["pixels"])
            embeds, pooled = self.encoders.encode_text(raw["caption"])
        return TrainBatch(latent_mean=mean.to(dev, torch.float32, non_blocking=nb),
                          latent_std=std.to(dev, torch.float32, non_blocking=nb),
                          prompt_embeds=embeds.to(dev, self.dtype, non_blocking=nb),
                          pooled=pooled.to(dev, self.dtype, non_blocking=nb),
                          lines=tuple(raw["line"]), flipped=tuple(raw["flip"]), bucket=tuple(raw["bucket"][0]))
