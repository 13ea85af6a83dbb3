"""Single-process parts of soar_fast.parallel: seeds, the global normalisation, wrapping choices, the
atomic folder and the launch checks."""

from __future__ import annotations

import os

import pytest
import torch

from soar_fast.config import ParallelConfig
from soar_fast.parallel.counts import global_counts, grad_scale, sum_over_ranks
from soar_fast.parallel.env import Dist, init_distributed, single_process
from soar_fast.seeds import SHARED, fresh_root_seed, stream_seed
from soar_fast.soar import soar_loss
from tests.tolerances import assert_close


def test_seeds_are_distinct_across_ranks_streams_and_roots():
    names = ("soar", "posterior", "dropout", "data")
    seeds = [stream_seed(s, r, n) for s in (0, 1, 42) for r in (SHARED, 0, 1, 2, 7) for n in names]
    assert len(set(seeds)) == len(seeds)
    assert stream_seed(1, 0, "soar") != stream_seed(0, 1, "soar")      # no seed + rank collisions
    assert all(0 <= s < 2**63 for s in seeds)


def test_seeds_are_stable_across_runs():
    # Pinned: a checkpoint's streams must be re-derivable by any later process or version.
    assert stream_seed(42, 0, "soar") == stream_seed(42, 0, "soar")
    assert stream_seed(42, 3, "noise", 5) == 8321584511391070917


def test_fresh_streams_for_new_ranks_differ_from_step_zero_and_by_step():
    assert fresh_root_seed(42, 100) != 42
    assert fresh_root_seed(42, 100) != fresh_root_seed(42, 200)
    assert stream_seed(fresh_root_seed(42, 100), 2, "soar") != stream_seed(42, 2, "soar")


def test_one_process_counts_stay_ints():
    d = single_process("cpu")
    assert global_counts(4, 40, d) == (4, 40)
    assert grad_scale(d) == 1
    x = torch.tensor(2.0)
    assert sum_over_ranks(x, d) is x


def test_global_counts_one_all_reduce_and_the_world_scale(monkeypatch):
    import torch.distributed as dist

    calls = []

    def fake_all_reduce(buf, op=None):   # rank 0 of 2 whose peer has n_main = 2, n_aux = 6
        calls.append(buf.shape)
        buf.add_(torch.tensor([2.0, 6.0]))

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    d = Dist(rank=0, world=2, backend="gloo")
    n_main, n_aux = global_counts(2, 8, d)
    assert calls == [torch.Size([2])]
    assert_close(n_main, torch.tensor(4.0))
    assert_close(n_aux, torch.tensor(14.0))
    # Rank 0's backward loss: S_0·W/N; DDP/FSDP2 divide the summed gradients by W again.
    main_sum = torch.tensor(3.0, requires_grad=True)
    (soar_loss(main_sum, torch.tensor(1.0), n_main, n_aux, 0.5) * grad_scale(d)).backward()
    assert_close(main_sum.grad, torch.tensor(2 / (4 + 0.5 * 14)))


def test_fsdp_mixed_precision_choice():
    from soar_fast.parallel.wrap import mixed_precision_dtypes

    cfg = ParallelConfig(strategy="fsdp2")
    assert mixed_precision_dtypes(cfg, autocast_bf16=True, device=torch.device("cpu")) == (None, torch.float32)
    assert mixed_precision_dtypes(cfg, autocast_bf16=True, device=torch.device("cuda", 0)) == (
        torch.bfloat16, torch.float32)
    assert mixed_precision_dtypes(cfg, autocast_bf16=False, device=torch.device("cuda", 0))[0] is None


def test_strategy_none_under_many_processes_names_the_key(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="parallel.strategy"):
        init_distributed(ParallelConfig(strategy="none"), device_type="cpu")


def test_plain_run_has_no_group(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    d = init_distributed(ParallelConfig(), device_type="cpu")
    assert (d.rank, d.world, d.is_main, d.has_group) == (0, 1, True, False)


def test_atomic_folder_replaces_and_leaves_nothing(tmp_path):
    from soar_fast.parallel.dcp import atomic_folder

    final = tmp_path / "step-3"
    for content in ("old", "new"):
        with atomic_folder(str(final), single_process("cpu")) as tmp:
            assert not final.exists() or content == "new"
            (tmp_path / os.path.basename(tmp) / "f").write_text(content)
    assert (final / "f").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["step-3"]


def test_atomic_folder_failure_keeps_the_previous(tmp_path):
    from soar_fast.parallel.dcp import atomic_folder

    final = tmp_path / "step-3"
    with atomic_folder(str(final), single_process("cpu")) as tmp:
        (tmp_path / os.path.basename(tmp) / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(str(final), single_process("cpu")) as tmp:
        raise RuntimeError("killed mid-save")
    assert (final / "f").read_text() == "old"


def test_unwrap_and_gradient_sync_on_a_plain_module():
    from soar_fast.parallel.wrap import gradient_sync, unwrap

    m = torch.nn.Linear(2, 2)
    assert unwrap(m) is m
    with gradient_sync(m, False):
        m(torch.ones(1, 2)).sum().backward()
    assert m.weight.grad is not None
