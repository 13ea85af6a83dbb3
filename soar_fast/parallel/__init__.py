"""Data parallelism on torch.distributed: process group, DDP/FSDP2 wrapping, the global
loss normalisation, DCP checkpoints, rank-0 export and fail-fast errors (docs/distributed.md)."""

from .counts import global_counts, grad_scale, sum_over_ranks
from .env import Dist, init_distributed, launched_by_torchrun, shutdown, single_process
from .failure import fail_fast
from .wrap import after_optimizer_step, apply_data_parallel, float8_fsdp_options, gradient_sync, unwrap

__all__ = [
    "Dist", "after_optimizer_step", "apply_data_parallel", "fail_fast", "float8_fsdp_options", "global_counts",
    "grad_scale", "gradient_sync", "init_distributed", "launched_by_torchrun", "shutdown", "single_process",
    "sum_over_ranks", "unwrap",
]
