"""`[ema]`: the EMA after N updates is the hand recurrence (each warm-up, `every` > 1) and diffusers'
EMAModel's; host offload gives the same bits; the swap restores the weights exactly; resume is exact
(losses and EMA bit for bit); the export loads in diffusers; sampling with `eval.use_ema` uses it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from soar_fast.config import EmaConfig
from soar_fast.train.ema import build_ema, ema_decay, restore_ema
from tests.conftest import FakeSource, tiny_config
from tests.tolerances import assert_close


class Toy(torch.nn.Module):
    """Odd, non-power-of-two shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(7, 5)
        self.b = torch.nn.Linear(5, 3, bias=False)
        self.frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def _ema(cfg: EmaConfig, model: torch.nn.Module):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    return build_ema(cfg, model, opt)


def _new_weights(model: torch.nn.Module, gen: torch.Generator) -> None:
    """An optimizer step's worth of change on every trainable weight."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


def _hand_decay(cfg: EmaConfig, k: int) -> float:
    """Decay of the k-th update (1-based) as docs/ema.md states it."""
    if cfg.warmup == "none":
        return cfg.decay
    if k == 1:
        return 0.0
    n = k - 1
    d = 1 - (1 + n / cfg.inv_gamma) ** (-cfg.power) if cfg.warmup == "power" else (1 + n) / (10 + n)
    return max(min(d, cfg.decay), cfg.min_decay)


WARMUPS = [EmaConfig(decay=0.8, every=1), EmaConfig(decay=0.9, every=3),
           EmaConfig(decay=0.95, every=1, warmup="power"),
           EmaConfig(decay=0.7, every=2, warmup="power", power=0.75, inv_gamma=2.0, min_decay=0.1),
           EmaConfig(decay=0.99, every=2, warmup="linear")]


@pytest.mark.parametrize("cfg", WARMUPS, ids=lambda c: f"{c.warmup}-every{c.every}")
def test_ema_after_n_updates_is_the_hand_recurrence(cfg):
    model = _toy()
    ema = _ema(cfg, model)
    assert ema.names == ["a.weight", "a.bias", "b.weight"]  # the optimizer's parameters, not the frozen one
    trained = [p for p in model.parameters() if p.requires_grad]
    expected = [p.detach().double().clone() for p in trained]
    gen = torch.Generator().manual_seed(1)
    k = 0
    for step in range(1, 11):
        _new_weights(model, gen)
        assert ema.after_step(step) == (step % cfg.every == 0)
        if step % cfg.every == 0:
            k += 1
            d = _hand_decay(cfg, k)
            expected = [d * e + (1 - d) * p.detach().double() for e, p in zip(expected, trained)]
    assert ema.updates == k == 10 // cfg.every
    for s, e in zip(ema.shadow, expected):
        assert s.dtype == torch.float32
        assert_close(s, e)


@pytest.mark.parametrize("warmup", ["power", "linear"])
def test_decay_schedule_is_diffusers_emamodel(warmup):
    from diffusers.training_utils import EMAModel

    cfg = EmaConfig(decay=0.999, warmup=warmup, power=0.75, inv_gamma=3.0, min_decay=0.05)
    theirs = EMAModel([torch.nn.Parameter(torch.randn(3))], decay=cfg.decay, min_decay=cfg.min_decay,
                      use_ema_warmup=warmup == "power", inv_gamma=cfg.inv_gamma, power=cfg.power)
    assert [ema_decay(cfg, k) for k in range(1, 300)] == [theirs.get_decay(k) for k in range(1, 300)]


def test_ema_matches_diffusers_emamodel_over_steps():
    from diffusers.training_utils import EMAModel

    cfg = EmaConfig(decay=0.9, warmup="power")
    model = _toy()
    ema = _ema(cfg, model)
    trained = [p for p in model.parameters() if p.requires_grad]
    theirs = EMAModel(trained, decay=cfg.decay, use_ema_warmup=True, inv_gamma=cfg.inv_gamma, power=cfg.power)
    gen = torch.Generator().manual_seed(2)
    for step in range(1, 8):
        _new_weights(model, gen)
        ema.after_step(step)
        theirs.step(trained)
    for s, t in zip(ema.shadow, theirs.shadow_params):
        assert_close(s, t)


def test_host_offload_gives_the_same_bits():
    cfg = EmaConfig(decay=0.9, every=2, warmup="linear")
    a, b = _toy(), _toy()
    same, host = _ema(cfg, a), _ema(dataclasses.replace(cfg, device="cpu"), b)
    assert host._staging is not None and same._staging is None
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(1, 7):
        _new_weights(a, ga)
        _new_weights(b, gb)
        same.after_step(step)
        host.after_step(step)
    for s, h in zip(same.shadow, host.shadow):
        assert h.device.type == "cpu" and torch.equal(s, h)


def test_bf16_weights_keep_an_fp32_ema():
    model = _toy().to(torch.bfloat16)
    ema = _ema(EmaConfig(decay=0.5), model)
    gen = torch.Generator().manual_seed(4)
    _new_weights(model, gen)
    ema.after_step(1)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(s.dtype == torch.float32 for s in ema.shadow)
    initial = _toy()
    for s, p, p0 in zip(ema.shadow, trained, [q for q in initial.parameters() if q.requires_grad]):
        want = 0.5 * p0.detach().to(torch.bfloat16).double() + 0.5 * p.detach().double()
        assert_close(s, want)


def test_swapped_in_uses_the_ema_and_restores_the_weights_exactly():
    model = _toy()
    ema = _ema(EmaConfig(decay=0.9), model)
    gen = torch.Generator().manual_seed(5)
    for step in range(1, 4):
        _new_weights(model, gen)
        ema.after_step(step)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 7, generator=gen)
    with ema.swapped_in():
        inside = model.b(model.a(x))
        for name, s in zip(ema.names, ema.shadow):
            assert torch.equal(model.get_parameter(name), s), name
    with pytest.raises(RuntimeError, match="boom"), ema.swapped_in():
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.allclose(inside, model.b(model.a(x)))


# ------------------------------------------------------------------------------------------ trainer

EMA_RUN = ["--ema.decay=0.8", "--ema.every=3", "--ema.warmup=power", "--train.max_steps=6",
           "--optim.lr=1e-3"]


def _records(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_resume_with_ema_is_exact_and_the_export_round_trips(tmp_path):
    """6 steps vs 4 + resume to 6 (EMA updates at steps 3 and 6: the checkpoint falls between two):
    the same losses and the same EMA bit for bit; `transformer_ema/` loads in diffusers and is the EMA."""
    from diffusers import SD3Transformer2DModel

    from soar_fast.models.ema_folder import ema_file, read_ema_meta, read_ema_tensors
    from soar_fast.train.checkpoint import latest_checkpoint, load_state, load_weights
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    full, part = tmp_path / "full", tmp_path / "part"
    a = Trainer.build(tiny_config(full, EMA_RUN), source=FakeSource())
    fit(a)
    fit(Trainer.build(tiny_config(part, [*EMA_RUN, "--train.max_steps=4"]), source=FakeSource()))
    meta = read_ema_meta(ema_file(str(part / "checkpoints" / "step-4")))
    assert meta["updates"] == "1" and meta["step"] == "4"
    c = Trainer.build(tiny_config(part, EMA_RUN), source=FakeSource())
    ckpt = latest_checkpoint(str(part))
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    restore_ema(c.ema, ckpt.path, step=c.step)
    assert c.ema.updates == 1
    fit(c)
    ra, rc = _records(full), _records(part)
    for step in (5, 6):
        for key in ("loss", "loss_main", "loss_aux", "grad_norm"):
            assert ra[step][key] == rc[step][key], (step, key)
    assert a.ema.updates == c.ema.updates == 2
    for name, sa, sc in zip(a.ema.names, a.ema.shadow, c.ema.shadow):
        assert torch.equal(sa, sc), name
    # The EMA moved away from the weights (decay 0.8 at the second update) and is not the initial weights.
    live = dict(a.model.named_parameters())
    assert not all(torch.equal(s, live[n]) for n, s in zip(a.ema.names, a.ema.shadow))
    # Export and the last checkpoint's EMA file hold the same tensors.
    exported = SD3Transformer2DModel.from_pretrained(str(full / "transformer_ema")).state_dict()
    saved = read_ema_tensors(ema_file(str(full / "checkpoints" / "step-6")))
    for name, s in zip(a.ema.names, a.ema.shadow):
        assert torch.equal(exported[name], s) and torch.equal(saved[name], s), name
    final = SD3Transformer2DModel.from_pretrained(str(full / "transformer")).state_dict()
    for name, p in live.items():
        assert torch.equal(final[name], p.detach()), name  # the swap gave the live weights back


def test_keeping_an_ema_leaves_training_unchanged(tmp_path):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    plain = Trainer.build(tiny_config(tmp_path / "plain", ["--train.max_steps=4", "--optim.lr=1e-3"]),
                          source=FakeSource())
    fit(plain)
    with_ema = Trainer.build(tiny_config(tmp_path / "ema", [*EMA_RUN, "--train.max_steps=4"]), source=FakeSource())
    fit(with_ema)
    assert plain.ema is None and with_ema.ema.updates == 1
    ra, rb = _records(tmp_path / "plain"), _records(tmp_path / "ema")
    assert [ra[s]["loss"] for s in ra] == [rb[s]["loss"] for s in rb]
    for (name, p), q in zip(plain.model.named_parameters(), with_ema.model.parameters()):
        assert torch.equal(p, q), name


def test_training_with_ema_previews_writes_both_grids_and_trains_the_same(tmp_path):
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    run = ["--ema.decay=0.5", "--train.max_steps=3", "--optim.lr=1e-3", "--model.resolution=32",
           "--checkpoint.every=0"]
    previews = ["--log.sample_every=2", "--eval.preview_ema=true", "--eval.preview_steps=1",
                "--data.max_sequence_length=8", "--eval.preview_prompts=a cat"]
    shapes = {"channels": 16, "dim": 64, "pooled_dim": 64, "size": 4}  # the tiny preset's encoders and VAE
    seen = Trainer.build(tiny_config(tmp_path / "seen", [*run, *previews]), source=FakeSource(**shapes))
    fit(seen)
    names = sorted(p.name for p in (tmp_path / "seen" / "samples").iterdir())
    assert names == ["step-0000002-ema.png", "step-0000002.png"]
    blind = Trainer.build(tiny_config(tmp_path / "blind", run), source=FakeSource(**shapes))
    fit(blind)
    for (name, p), q in zip(seen.model.named_parameters(), blind.model.parameters()):
        assert torch.equal(p, q), name
    for a, b in zip(seen.ema.shadow, blind.ema.shadow):
        assert torch.equal(a, b)


def test_resuming_a_checkpoint_without_ema_starts_it_from_the_resumed_weights(tmp_path):
    from soar_fast.train.checkpoint import latest_checkpoint, load_state, load_weights
    from soar_fast.train.loop import fit
    from soar_fast.train.trainer import Trainer

    out = tmp_path / "run"
    fit(Trainer.build(tiny_config(out, ["--train.max_steps=2", "--optim.lr=1e-3"]), source=FakeSource()))
    c = Trainer.build(tiny_config(out, EMA_RUN), source=FakeSource())
    ckpt = latest_checkpoint(str(out))
    load_weights(c.model, ckpt)
    c.load_state_dict(load_state(ckpt))
    restore_ema(c.ema, ckpt.path, step=c.step)
    live = dict(c.model.named_parameters())
    assert c.ema.updates == 0
    for name, s in zip(c.ema.names, c.ema.shadow):
        assert torch.equal(s, live[name].detach()), name


# ------------------------------------------------------------------------------------------ sampling

def test_sampling_with_eval_use_ema_takes_the_ema_weights(tmp_path):
    from soar_fast.config import EvalConfig, ModelConfig
    from soar_fast.config_io import ConfigError
    from soar_fast.eval.pipeline import load_pipeline
    from soar_fast.models.ema_folder import EMA_EXPORT
    from soar_fast.models.transformer import ModelFolderError, build_transformer
    from soar_fast.parallel import single_process
    from soar_fast.train.checkpoint import save_checkpoint

    trained = build_transformer(ModelConfig())
    ema = _ema(EmaConfig(decay=0.6), trained)
    gen = torch.Generator().manual_seed(6)
    for step in range(1, 4):
        _new_weights(trained, gen)
        ema.after_step(step)
    d = single_process("cpu")
    ckpt = save_checkpoint(str(tmp_path), 3, transformer=trained, state={"step": 3},
                           ema=(ema.full_tensors(d), ema.meta(3)))
    base = EvalConfig(steps=2, resolution=32, max_sequence_length=8, compile=False)
    cpu = torch.device("cpu")
    live = load_pipeline(ModelConfig(), dataclasses.replace(base, checkpoint=ckpt.path), cpu)
    averaged = load_pipeline(ModelConfig(), dataclasses.replace(base, checkpoint=ckpt.path, use_ema=True), cpu)
    params = dict(averaged.transformer.named_parameters())
    for name, s in zip(ema.names, ema.shadow):
        assert torch.equal(params[name], s), name
    images = averaged.generate(["a cat", "a red circle"], [1, 2])
    assert not torch.allclose(images, live.generate(["a cat", "a red circle"], [1, 2]))
    # The same images as the live transformer with the EMA swapped in by hand.
    with ema.swapped_in():
        by_hand = load_pipeline(ModelConfig(), base, cpu, transformer=trained)
        assert torch.equal(images, by_hand.generate(["a cat", "a red circle"], [1, 2]))
    # An exported run: transformer_ema/ beside transformer/, found from the run folder or its transformer/.
    run = tmp_path / "run"
    trained.save_pretrained(str(run / "transformer"))
    with ema.swapped_in():
        trained.save_pretrained(str(run / EMA_EXPORT))
    for folder in (run, run / "transformer", run / EMA_EXPORT):
        pipe = load_pipeline(ModelConfig(), dataclasses.replace(base, checkpoint=str(folder), use_ema=True), cpu)
        assert torch.equal(pipe.generate(["a cat", "a red circle"], [1, 2]), images), folder
    # No EMA to take: errors that name the key.
    bare = save_checkpoint(str(tmp_path / "bare"), 1, transformer=trained, state={"step": 1})
    with pytest.raises(ModelFolderError, match="eval.use_ema"):
        load_pipeline(ModelConfig(), dataclasses.replace(base, checkpoint=bare.path, use_ema=True), cpu)
    with pytest.raises(ConfigError, match="eval.use_ema = true needs eval.checkpoint"):
        load_pipeline(ModelConfig(), dataclasses.replace(base, use_ema=True), cpu)


def test_preview_ema_needs_an_ema():
    from soar_fast.config_io import ConfigError, load_config

    with pytest.raises(ConfigError, match="eval.preview_ema"):
        load_config(None, ["--eval.preview_ema=true"])
    assert load_config(None, ["--eval.preview_ema=true", "--ema.decay=0.99"]).eval.preview_ema


def test_an_ema_that_does_not_fit_the_model_is_an_error_naming_the_file():
    from soar_fast.models.folder import ModelFolderError

    ema = _ema(EmaConfig(decay=0.9), _toy())
    tensors = dict(zip(ema.names, ema.shadow))
    with pytest.raises(ModelFolderError, match=r"run/ema.safetensors: .*missing \['b.weight'\]"):
        ema.load_full_tensors({k: v for k, v in tensors.items() if k != "b.weight"}, 3, source="run/ema.safetensors")
    with pytest.raises(ModelFolderError, match=r"EMA tensor a.bias has shape \(4,\), the parameter \(5,\)"):
        ema.load_full_tensors({**tensors, "a.bias": torch.randn(4)}, 3, source="run/ema.safetensors")
