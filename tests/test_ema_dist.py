"""The EMA on 2 gloo ranks: under FSDP2 each rank holds the EMA of its own shards (uneven ones included),
the gathered EMA is the one-process EMA bit for bit (also under DDP and with host offload), a gathered
EMA loads back into the shards exactly, and `swapped_in` under FSDP2 samples with the EMA and gives the
weights back (the next forward is the live one's, bit for bit).

One spawn of 2 processes runs every multi-rank part. Each "optimizer step" sets the weights to the same
seeded full tensors in every run (each rank copies in its shard), so the EMAs can be compared exactly.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from soar_fast.config import EmaConfig, ParallelConfig
from tests.conftest import run_ranks

WORLD = 2
STEPS = 5
CFG = EmaConfig(decay=0.9, every=2, warmup="power", inv_gamma=2.0)


class Toy(torch.nn.Module):
    """dim 0 of 5 and 3: uneven FSDP2 shards on 2 ranks (3 + 2 and 2 + 1 rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(7, 5), torch.nn.Linear(5, 3)])
        self.head = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def _toy() -> Toy:
    torch.manual_seed(0)
    return Toy()


def _weights(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return {k: torch.randn(v.shape, generator=g) for k, v in _toy().state_dict().items()}


def _set_weights(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        for name, p in model.named_parameters():
            value = full[name.removeprefix("module.")]
            if isinstance(p, DTensor):
                value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None).to_local()
                p.to_local().copy_(value)
            else:
                p.copy_(value)


def _run(model: torch.nn.Module, cfg: EmaConfig = CFG):
    from soar_fast.train.ema import build_ema

    ema = build_ema(cfg, model, torch.optim.SGD(model.parameters(), lr=0.0))
    for step in range(1, STEPS + 1):
        _set_weights(model, _weights(step))
        ema.after_step(step)
    return ema


def _fsdp2(model: torch.nn.Module) -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    # As parallel/wrap.py shards the root: kept gathered after a forward.
    return fully_shard(model, reshard_after_forward=False)


def _worker(tmp: str) -> None:
    from soar_fast.parallel import fail_fast, init_distributed, shutdown
    from soar_fast.parallel.wrap import apply_ddp

    torch.set_num_threads(1)
    d = init_distributed(ParallelConfig(strategy="fsdp2", timeout_s=60), device_type="cpu")
    with fail_fast(d):
        results: dict = {}
        model = _fsdp2(_toy())
        ema = _run(model)
        results["local_rows"] = [s.shape[0] for s in ema.shadow]
        assert all(s.shape == p.to_local().shape for s, p in zip(ema.shadow, ema.params))
        results["fsdp2"] = ema.full_tensors(d)
        results["fsdp2_cpu"] = _run(_fsdp2(_toy()), dataclasses.replace(CFG, device="cpu")).full_tensors(d)
        # A gathered EMA loads back into the shards exactly.
        fresh = _run(_fsdp2(_toy()), EmaConfig(decay=0.5))
        full = d.broadcast_object(results["fsdp2"] if d.is_main else None)
        fresh.load_full_tensors(full, ema.updates, source="test")
        assert fresh.updates == ema.updates
        assert all(torch.equal(a, b) for a, b in zip(fresh.shadow, ema.shadow))
        # Swap under FSDP2: a forward with the EMA, then the live weights again, bit for bit.
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            before = model(x)
            with ema.swapped_in():
                results["swapped_out"] = model(x)
            results["after_equals_before"] = torch.equal(model(x), before)
        results["ddp"] = _run(apply_ddp(_toy(), d)).full_tensors(d)
        if d.is_main:
            torch.save(results, os.path.join(tmp, "results.pt"))
    shutdown(d)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("ema-dist"))
    return run_ranks(_worker, WORLD, tmp, timeout_s=150)


@pytest.fixture(scope="module")
def one_process():
    return _run(_toy())


def test_fsdp2_keeps_the_ema_of_its_own_shards(two_ranks):
    # Rank 0's rows of a.weight, a.bias, b.weight, b.bias, head.weight, head.bias (dim 0: 5, 5, 3, 3, 3, 3).
    assert two_ranks["local_rows"] == [3, 3, 2, 2, 2, 2]


@pytest.mark.parametrize("run", ["fsdp2", "fsdp2_cpu", "ddp"])
def test_two_rank_ema_is_the_one_process_ema(two_ranks, one_process, run):
    got = two_ranks[run]
    assert list(got) == one_process.names
    for name, s in zip(one_process.names, one_process.shadow):
        assert torch.equal(got[name], s), f"{run} {name}"


def test_swap_under_fsdp2_samples_the_ema_and_gives_the_weights_back(two_ranks, one_process):
    with torch.no_grad():
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(9))
        with one_process.swapped_in():
            want = one_process.model(x)
    assert two_ranks["after_equals_before"], "after the swap the root computed with stale gathered weights"
    assert torch.equal(two_ranks["swapped_out"], want)
