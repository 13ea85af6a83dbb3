"""The GPUs `soar-fast plan` knows: memory, dense matrix rates and memory bandwidth, each with its source.

Rates are dense (no 2:4 sparsity). bf16 is the tensor-core rate with fp32 accumulation (what bf16
autocast training runs); fp32 is the plain (non-tensor-core) rate, which fp32 matmuls get with torch's
default `allow_tf32 = False`. Memory is the datasheet capacity; `soar-fast plan --headroom` keeps a
margin of it free for the CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation, none of
which the tensor trackers see.
"""

from __future__ import annotations

from dataclasses import dataclass

from soar_fast.config_io import ConfigError

GiB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    bf16_flops: float
    """Dense bf16 tensor-core FLOP/s."""
    fp32_flops: float
    """Plain fp32 FLOP/s."""
    bytes_per_s: float
    """DRAM bandwidth."""
    source: str


GPUS: dict[str, GPU] = {g.name.lower(): g for g in (
    GPU("H200", 139 * GiB, 790e12, 67e12, 4.3e12,
        "measured on an H200 SXM: 8192^3 bf16 matmul 769-798 TFLOP/s, device copy 4.3 TB/s, 139 GiB "
        "visible to torch (datasheet: 989 TFLOP/s, 4.8 TB/s, 141 GB); fp32 from the H200 datasheet"),
    GPU("H100-80G", 80 * GiB, 989e12, 67e12, 3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet, SXM5 80GB: BF16 1,979 TFLOPS with sparsity (989 dense), "
        "FP32 67 TFLOPS, HBM3 3.35 TB/s"),
    GPU("A100-80G", 80 * GiB, 312e12, 19.5e12, 2.039e12,
        "NVIDIA A100 Tensor Core GPU datasheet, SXM 80GB: BF16 312 TFLOPS dense, FP32 19.5 TFLOPS, "
        "HBM2e 2,039 GB/s"),
    GPU("A100-40G", 40 * GiB, 312e12, 19.5e12, 1.555e12,
        "NVIDIA A100 Tensor Core GPU datasheet, SXM 40GB: BF16 312 TFLOPS dense, FP32 19.5 TFLOPS, "
        "HBM2 1,555 GB/s"),
    GPU("L40S", 48 * GiB, 362.05e12, 91.6e12, 0.864e12,
        "NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity (362 dense), FP32 91.6 TFLOPS, "
        "48 GB GDDR6 864 GB/s"),
    GPU("RTX4090", 24 * GiB, 165.2e12, 82.6e12, 1.008e12,
        "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: BF16 with FP32 accumulate "
        "165.2 TFLOPS dense, FP32 82.6 TFLOPS, 24 GB GDDR6X 1,008 GB/s"),
)}


def gpu(name: str) -> GPU:
    """The GPU named `name` (case-insensitive, `-` optional: `h100-80g`, `RTX4090`, `rtx-4090`)."""
    key = name.lower()
    for g in GPUS.values():
        if key in (g.name.lower(), g.name.lower().replace("-", ""), g.name.lower().replace("rtx", "rtx-")):
            return g
    raise ConfigError(f"--gpu: unknown GPU {name!r} (choose from {', '.join(g.name for g in GPUS.values())})")
