"""`accel.compile`: `torch.compile` each transformer block (torchtitan's per-block compile).

Per block rather than the whole model: the 24 SD3.5 blocks share two code shapes (joint and
dual-attention; the last block is `context_pre_only`), so compilation cost is a few graphs, and
the blocks stay ordinary modules for checkpointing, state dicts and FSDP. `nn.Module.compile()`
compiles in place, so parameter names (and saved checkpoints) are unchanged.

`fullgraph=True`: diffusers' SD3 blocks trace without graph breaks (checked on CPU with diffusers
0.42 in tests/test_accel_compile.py), so a break is a regression to hear about, not to hide.
`dynamic=False`: bucket shapes are few and static shapes give the best kernels; a new bucket
shape or batch recompiles once (aux chunks of a different size included).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# The compiler backend `apply_compile` uses unless told otherwise. Tests that check the wiring
# rather than inductor's code generation set it to "aot_eager" (seconds instead of minutes on CPU).
DEFAULT_BACKEND = "inductor"


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"accel.compile expects an SD3-style model with `transformer_blocks`, got "
                        f"{type(transformer).__name__}")
    return list(blocks)


def apply_compile(transformer: torch.nn.Module, *, fullgraph: bool = True, mode: str | None = None,
                  backend: str | None = None) -> str:
    """Compile every transformer block in place; return a short description for the report.

    Compilation happens lazily on the first call of each block, so this is cheap; the first step pays.
    """
    import torch._dynamo

    backend = backend or DEFAULT_BACKEND
    # Every block is the same code object: without headroom dynamo gives up after 8 recompiles
    # (e.g. one per aux-chunk shape) and silently runs eager.
    # (`recompile_limit` since torch 2.6; `cache_size_limit` is its older name.)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), 64))
    blocks = _blocks(transformer)
    for block in blocks:
        block.compile(fullgraph=fullgraph, mode=mode, backend=backend, dynamic=False)
    desc = f"per-block torch.compile ({len(blocks)} blocks, fullgraph={fullgraph}, backend={backend})"
    log.info("compile: %s", desc)
    return desc
