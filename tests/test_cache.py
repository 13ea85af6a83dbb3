"""`soar-fast cache`: shards, resume, rank split, and training from the cache without any encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from soar_fast.config import Config
from soar_fast.data.cache_store import CacheStore
from soar_fast.data.errors import DataError
from tests.test_data_fixtures import write_acceptance_set, write_clean_set
from tests.tolerances import STEP_LOSS_RTOL, assert_close


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soar_fast.models.export import export_tiny_pipeline

    return export_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="module")
def exact_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Images exactly at their bucket size: the cache's centre crop equals any on-the-fly crop.
    return write_clean_set(tmp_path_factory.mktemp("exact"), per_bucket=4, exact=True)


def _cfg(out: Path, jsonl: Path, model_dir: Path, cache: Path | None = None, **data: object) -> Config:
    cfg = Config()
    cfg.run.output_dir = str(out)
    cfg.model.path = str(model_dir)
    cfg.data.jsonl, cfg.data.cache = str(jsonl), str(cache) if cache else None
    cfg.data.batch_size, cfg.data.cache_shard_size, cfg.data.encode_batch_size = 2, 3, 2
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_cache_rows_equal_on_the_fly_encoding(tiny_dir: Path, exact_jsonl: Path, tmp_path: Path) -> None:
    from soar_fast.data.cache import main_cache
    from soar_fast.data.encoders import load_encoders
    from soar_fast.data.images import load_rgb
    from soar_fast.data.transform import to_pixels

    cfg = _cfg(tmp_path / "run", exact_jsonl, tiny_dir, tmp_path / "cache", random_flip=True)
    assert main_cache(cfg, None) == 0
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert [len(s["lines"]) for s in index["shards"]] == [3, 1, 3, 1]  # per bucket, ≤ shard size
    store = CacheStore(tmp_path / "cache")
    assert len(store) == 8 and store.has_flips and store.text_length == 154
    enc = load_encoders(cfg.model, cfg.data)
    for i in (0, 5):
        line = store.lines[i]
        row = json.loads(exact_jsonl.read_text().splitlines()[line - 1])
        pixels = to_pixels(load_rgb(exact_jsonl.parent / f"{row['md5']}.jpg"))
        for flip in (False, True):
            mean, std = enc.encode_pixels((pixels.flip(-1) if flip else pixels)[None])
            cached = store.row(i, flip)
            assert_close(cached["latent_mean"], mean[0])
            assert_close(cached["latent_std"], std[0])
        embeds, pooled = enc.encode_text([row["caption_en"]])
        assert_close(store.row(i)["prompt_embeds"], embeds[0])
        assert_close(store.row(i)["pooled"], pooled[0])
    assert_close(store.null_embeds, enc.encode_text([""])[0])


def test_resume_and_rank_split(tiny_dir: Path, exact_jsonl: Path, tmp_path: Path) -> None:
    from soar_fast.data.build import report_of, scan_data
    from soar_fast.data.cache_writer import write_cache
    from soar_fast.data.encoders import load_encoders

    cfg = _cfg(tmp_path / "run", exact_jsonl, tiny_dir, tmp_path / "cache")
    result = scan_data(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=tmp_path / "run", progress=False)
    enc = load_encoders(cfg.model, cfg.data)
    kw = {"report": report_of(cfg.data, result, 1), "shard_size": 3, "batch_size": 2, "progress": False}
    r0 = write_cache(tmp_path / "cache", result, enc, rank=0, world=2, **kw)
    assert (r0.shards, r0.written) == (4, 2)
    with pytest.raises(DataError, match="cache incomplete, 2 of 4 shards missing"):
        CacheStore(tmp_path / "cache")
    r1 = write_cache(tmp_path / "cache", result, enc, rank=1, world=2, **kw)
    assert r1.written == 2
    assert len(CacheStore(tmp_path / "cache")) == 8

    victim = sorted((tmp_path / "cache").glob("shard-*.safetensors"))[1]
    victim.unlink()
    again = write_cache(tmp_path / "cache", result, enc, **kw)
    assert (again.written, again.skipped_done, again.samples) == (1, 3, 1)
    assert victim.is_file()

    other = _cfg(tmp_path / "run", exact_jsonl, tiny_dir, tmp_path / "cache", max_sequence_length=20)
    with pytest.raises(DataError, match="written for different encoders"):
        write_cache(tmp_path / "cache", result, load_encoders(other.model, other.data), **kw)
    with pytest.raises(DataError, match="max_sequence_length: cache 77, config 20"):
        _source(other)


def _source(cfg: Config):
    from soar_fast.data.build import build_source

    return build_source(cfg.data, cfg.model, seed=cfg.train.seed, output_dir=cfg.run.output_dir)


def _trainer_cfg(out: Path, jsonl: Path, model_dir: Path, cache: Path | None) -> Config:
    from tests.conftest import tiny_config

    overrides = [f"--model.path={model_dir}", f"--data.jsonl={jsonl}", "--data.batch_size=2",
                 "--train.max_steps=3"]
    if cache:
        overrides.append(f"--data.cache={cache}")
    return tiny_config(out, overrides)


def test_cached_and_on_the_fly_training_give_the_same_losses(tiny_dir: Path, exact_jsonl: Path,
                                                               tmp_path: Path) -> None:
    from soar_fast.data.cache import main_cache
    from soar_fast.train.trainer import Trainer

    cached_cfg = _trainer_cfg(tmp_path / "a", exact_jsonl, tiny_dir, tmp_path / "cache")
    main_cache(cached_cfg, None)
    losses = []
    for cfg in (cached_cfg, _trainer_cfg(tmp_path / "b", exact_jsonl, tiny_dir, None)):
        trainer = Trainer.build(cfg)
        assert trainer.source.info.kind == ("cache" if cfg.data.cache else "on-the-fly")
        run = []
        for _ in range(3):  # ε is drawn from the trainer's seeded stream: the same in both runs
            run.append(trainer.train_step().loss.detach())
            trainer.apply_update()
        losses.append(torch.stack(run))
    torch.testing.assert_close(losses[0], losses[1], rtol=STEP_LOSS_RTOL, atol=0)


def test_training_from_a_cache_builds_no_encoder(tiny_dir: Path, exact_jsonl: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers
    import transformers

    from soar_fast.data.cache import main_cache
    from soar_fast.train.trainer import Trainer

    main_cache(_trainer_cfg(tmp_path / "run", exact_jsonl, tiny_dir, tmp_path / "cache"), None)
    # Train with a copy of the folder that has no text encoder or VAE at all.
    bare = tmp_path / "bare"
    for part in ("transformer", "scheduler"):
        shutil.copytree(tiny_dir / part, bare / part)
    cfg = _trainer_cfg(tmp_path / "run", exact_jsonl, bare, tmp_path / "cache")

    def forbidden(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} instantiated while training from a cache")

    for cls in (transformers.CLIPTextModelWithProjection, transformers.T5EncoderModel, diffusers.AutoencoderKL):
        monkeypatch.setattr(cls, "__init__", forbidden)
    trainer = Trainer.build(cfg)
    batch = next(iter(trainer.source))
    assert batch.latent_std is not None
    assert torch.isfinite(trainer.train_step().loss)


def test_cli_acceptance(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bad-input acceptance set: `data check` (skip → 15 kept / 3 skipped; error → names data.jsonl:4), then
    `cache` and `train --data.cache` with the exported folder."""
    from soar_fast.cli import main

    write_acceptance_set(tmp_path / "data")
    base = [f"--data.jsonl={tmp_path / 'data' / 'data.jsonl'}", f"--run.output_dir={tmp_path / 'run'}",
            f"--model.path={tiny_dir}"]
    assert main(["data", "check", *base]) == 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert (report["total"], report["kept"], len(report["skipped"])) == (18, 15, 3)
    assert {s["line"] for s in report["skipped"]} == {4, 9, 12}

    assert main(["data", "check", *base, "--data.on_bad_sample=error"]) != 0
    assert "data.jsonl:4: malformed JSON" in capsys.readouterr().err

    cache = tmp_path / "cache"
    assert main(["cache", *base, f"--data.cache={cache}", "--data.batch_size=2"]) == 0
    assert "samples/s" in capsys.readouterr().out
    train = [*base, f"--data.cache={cache}", "--data.batch_size=2", "--train.max_steps=2", "--run.device=cpu",
             "--log.progress=false", "--log.tensorboard=false", "--log.plot=false", "--soar.trajectory_length=2"]
    assert main(["train", *train]) == 0
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_cached_and_on_the_fly_sources_flip_the_same_samples(tiny_dir: Path, exact_jsonl: Path,
                                                              tmp_path: Path) -> None:
    """With flips on and two buckets (cache rows are grouped by bucket, unlike the JSONL), both
    sources hand out the same samples with the same flip decisions, step by step."""
    from itertools import islice

    from soar_fast.data.cache import main_cache
    cached = _cfg(tmp_path / "a", exact_jsonl, tiny_dir, tmp_path / "cache", random_flip=True)
    assert main_cache(cached, None) == 0
    fly = _cfg(tmp_path / "b", exact_jsonl, tiny_dir, None, random_flip=True)
    a = list(islice(iter(_source(cached)), 8))
    b = list(islice(iter(_source(fly)), 8))
    assert [x.lines for x in a] == [y.lines for y in b]
    assert [x.flipped for x in a] == [y.flipped for y in b]
    assert any(any(x.flipped) for x in a) and not all(all(x.flipped) for x in a)
