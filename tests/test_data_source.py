"""`build_source` → `TrainSource`: batches, per-rank shards, endless epochs, exact resume, demo set."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from soar_fast.config import Config
from soar_fast.data.build import build_source as build_from_sections
from soar_fast.data.source import TrainBatch, TrainSource
from tests.test_data_fixtures import write_clean_set


def _cfg(out: Path, jsonl: Path | None = None, **data: object) -> Config:
    cfg = Config()
    cfg.run.output_dir = str(out)
    cfg.data.jsonl = str(jsonl) if jsonl else None
    cfg.data.batch_size = 2
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def build_source(cfg: Config, **kw: object) -> TrainSource:
    return build_from_sections(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=cfg.run.output_dir, **kw)


def _key(batch: TrainBatch) -> tuple:
    return batch.lines, batch.flipped, batch.bucket


@pytest.fixture(scope="module")
def clean_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clean_set(tmp_path_factory.mktemp("clean"), exact=False)


def test_on_the_fly_batches(clean_jsonl: Path, tmp_path: Path) -> None:
    src = build_source(_cfg(tmp_path, clean_jsonl, random_flip=True), device="cpu")
    assert isinstance(src, TrainSource)
    assert src.steps_per_epoch == 8 and src.latent_channels == 16
    assert src.null_embeds.shape == (1, 154, 64) and src.null_pooled.shape == (1, 64)
    batches = list(islice(iter(src), 8))
    for b in batches:
        w, h = b.bucket
        assert b.latent_mean.shape == b.latent_std.shape == (2, 16, h // 2, w // 2)  # the tiny preset: toy VAE
        assert b.prompt_embeds.shape == (2, 154, 64) and b.pooled.shape == (2, 64)
    lines = [ln for b in batches for ln in b.lines]
    assert sorted(lines) == list(range(1, 17)), "one epoch = every sample once"
    assert any(f for b in batches for f in b.flipped) and not all(f for b in batches for f in b.flipped)
    assert src.state_dict()["epoch"] == 1 and src.state_dict()["cursor"] == 0
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert report["kept"] == 16 and report["buckets"] == {"32x32": 8, "48x32": 8}


def test_resume_is_exact_and_workers_agree(clean_jsonl: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, clean_jsonl, random_flip=True)
    a = build_source(cfg, device="cpu")
    it = iter(a)
    first = list(islice(it, 11))  # crosses into epoch 1
    state = a.state_dict()
    assert (state["epoch"], state["cursor"]) == (1, 3)
    rest = list(islice(it, 6))

    cfg.data.num_workers = 2
    b = build_source(cfg, device="cpu")
    b.load_state_dict(state)
    resumed = list(islice(iter(b), 6))
    assert [_key(x) for x in resumed] == [_key(x) for x in rest]
    for x, y in zip(resumed, rest):
        assert torch.equal(x.latent_mean, y.latent_mean) and torch.equal(x.prompt_embeds, y.prompt_embeds)

    b.set_epoch(0)
    again = list(islice(iter(b), 11))
    assert [_key(x) for x in again] == [_key(x) for x in first]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_shards_and_the_same_buckets(clean_jsonl: Path, tmp_path: Path, world: int) -> None:
    cfg = _cfg(tmp_path, clean_jsonl)
    sources = [build_source(cfg, rank=r, world=world, device="cpu") for r in range(world)]
    steps = sources[0].steps_per_epoch
    assert all(s.steps_per_epoch == steps for s in sources)
    per_rank = [list(islice(iter(s), steps)) for s in sources]
    for step in zip(*per_rank):
        assert len({b.bucket for b in step}) == 1
    lines = [ln for batches in per_rank for b in batches for ln in b.lines]
    assert len(lines) == len(set(lines))


def test_demo_set_is_generated_reproducibly(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "a", demo_size=8)
    src = build_source(cfg, device="cpu")
    folder = tmp_path / "a" / "demo-data"
    rows = [json.loads(x) for x in (folder / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all((folder / f"{r['md5']}.jpg").is_file() for r in rows)
    assert all(" on a " in r["caption_en"] and r["caption_en"].endswith("background") for r in rows)
    assert {(r["bw"], r["bh"]) for r in rows} == {(64, 64), (80, 48)}
    assert (folder / "cache" / "index.json").is_file()
    batch = next(iter(src))
    assert batch.prompt_embeds.shape[-1] == 64 and batch.latent_mean.shape[1] == 16

    again = build_source(_cfg(tmp_path / "b", demo_size=8), device="cpu")
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "demo-data" / "data.jsonl").read_text().splitlines()]
    assert rows_b == rows
    assert torch.equal(next(iter(again)).latent_mean, batch.latent_mean)
    cfg_c = _cfg(tmp_path / "c", demo_size=8)
    cfg_c.train.seed = 1
    build_source(cfg_c, device="cpu")
    rows_c = [json.loads(x) for x in (tmp_path / "c" / "demo-data" / "data.jsonl").read_text().splitlines()]
    assert rows_c != rows


def test_batch_larger_than_every_bucket_is_an_error(clean_jsonl: Path, tmp_path: Path) -> None:
    from soar_fast.data.errors import DataError

    with pytest.raises(DataError, match=r"data\.jsonl: no bucket holds data\.batch_size × world = 9"):
        build_source(_cfg(tmp_path, clean_jsonl, batch_size=9), device="cpu")
