"""A rank that raises ends every rank with a non-zero exit, well within the collective timeout."""

from __future__ import annotations

import os
import time

import torch

from soar_fast.config import ParallelConfig

TIMEOUT_S = 20


def _raise_on_rank_1(marker_dir: str) -> None:
    import torch.distributed as dist

    from soar_fast.parallel import fail_fast, init_distributed

    d = init_distributed(ParallelConfig(strategy="ddp", timeout_s=TIMEOUT_S), device_type="cpu")
    with fail_fast(d):
        x = torch.ones(1)
        dist.all_reduce(x)                  # the group works ...
        if d.rank == 1:
            raise RuntimeError("injected failure on rank 1")
        dist.all_reduce(x)                  # ... then rank 0 waits on a peer that is gone
        dist.barrier()
        open(os.path.join(marker_dir, f"finished-{d.rank}"), "w").close()


def _hang_on_rank_1(marker_dir: str) -> None:
    import torch.distributed as dist

    from soar_fast.parallel import fail_fast, init_distributed

    d = init_distributed(ParallelConfig(strategy="ddp", timeout_s=3), device_type="cpu")
    with fail_fast(d):
        if d.rank == 1:
            time.sleep(8)                   # stuck without raising: only the timeout can end rank 0
        dist.barrier()
        open(os.path.join(marker_dir, f"finished-{d.rank}"), "w").close()


def test_a_raising_rank_ends_the_group_non_zero(tmp_path, capfd):
    from soar_fast.parallel.launch import spawn_local

    start = time.monotonic()
    codes = spawn_local(_raise_on_rank_1, 2, str(tmp_path), timeout_s=TIMEOUT_S + 40)
    elapsed = time.monotonic() - start
    assert None not in codes, f"a rank hung until the deadline: exit codes {codes}"
    assert codes[0] != 0 and codes[1] != 0, f"both ranks must exit non-zero, got {codes}"
    assert not list(tmp_path.iterdir()), "no rank may finish after its peer failed"
    assert "injected failure on rank 1" in capfd.readouterr().err
    assert elapsed < TIMEOUT_S + 40


def test_a_hanging_rank_ends_at_the_timeout(tmp_path):
    from soar_fast.parallel.launch import spawn_local

    codes = spawn_local(_hang_on_rank_1, 2, str(tmp_path), timeout_s=45)
    # Rank 0's barrier times out after 3 s and fail_fast exits; rank 1's barrier then fails at once.
    assert codes[0] not in (0, None) and codes[1] not in (0, None), f"both ranks must fail, got {codes}"
    assert not (tmp_path / "finished-0").exists()
