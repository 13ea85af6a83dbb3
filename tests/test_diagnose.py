"""Exposure-bias diagnostics: the formulas on velocities whose answers are known, and the command end to end."""

from __future__ import annotations

import json

import pytest
import torch

from soar_fast.eval.exposure import STATES, ExposureBias, exposure_bias, merge, rollout_paths
from soar_fast.soar.grid import SigmaGrid
from tests.tolerances import assert_close

SHAPE = (3, 5, 7, 6)  # B, C, h, w: nothing a power of two


def _latents(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.7 * torch.randn(SHAPE, generator=g) + 0.2, torch.randn(SHAPE, generator=g)


def _paths(seed: int = 1) -> torch.Tensor:
    """(4, 4) random non-increasing paths, one with a zero-length step, one ending at a tiny sigma."""
    g = torch.Generator().manual_seed(seed)
    p = torch.sort(torch.rand(4, 4, generator=g) * 0.9 + 0.05, dim=1, descending=True).values
    p[1, 2] = p[1, 1]
    p[2, -1] = 1e-3
    return p


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x.repeat(rows // x.shape[0], 1, 1, 1)


def _n(x: torch.Tensor) -> torch.Tensor:
    return x.double().flatten(1).norm(dim=1)


def _check(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert_close(actual.to(torch.float32), expected.to(torch.float32), msg=what)


def _biased(d: torch.Tensor, b_c: torch.Tensor, b_u: torch.Tensor | None):
    def velocity(z, sigma):
        rows = z.shape[0]
        return _rows(d + b_c, rows), None if b_u is None else _rows(d + b_u, rows)
    return velocity


@pytest.mark.parametrize("cfg_scale", [4.5, 1.0])
def test_the_true_velocity_gives_zero_everywhere(cfg_scale):
    z0, z1 = _latents()
    d = z1 - z0
    out = exposure_bias(_biased(d, torch.zeros_like(d), torch.zeros_like(d)), z0, z1, _paths(),
                        cfg_scale=cfg_scale)
    zeros = torch.zeros(4, SHAPE[0], dtype=torch.float64)
    _check(out.drift, zeros, "drift")
    for state in STATES:
        for name, value in vars(getattr(out, state)).items():
            _check(value, zeros, f"{state}.{name}")


def test_a_constant_bias_gives_the_predicted_drift_and_errors():
    z0, z1 = _latents(2)
    d = z1 - z0
    g = torch.Generator().manual_seed(3)
    b_c, b_u = 0.3 * torch.randn(SHAPE, generator=g), 0.2 * torch.randn(SHAPE, generator=g)
    w = 4.5
    beta = b_u + w * (b_c - b_u)  # the guided velocity's bias
    paths = _paths(4)
    out = exposure_bias(_biased(d, b_c, b_u), z0, z1, paths, cfg_scale=w)
    s_start, s_end = paths[:, :1].double(), paths[:, -1:].double()
    nd, nz0 = _n(d)[None], _n(z0)[None]
    # Euler with v = d + β: ẑ = z_σe − (σs − σe)·β.
    _check(out.drift, (s_start - s_end) * _n(beta)[None] / nd, "drift")
    for state in STATES:
        e = getattr(out, state)
        _check(e.velocity_error, (_n(b_c)[None] / nd).square().expand(4, -1), f"{state} velocity_error")
        _check(e.velocity_error_cfg, (_n(beta)[None] / nd).square().expand(4, -1), f"{state} velocity_error_cfg")
        if state != "self_rollout":  # on the ray SOAR's target (z − z0)/σ is d
            _check(e.correction_error, e.velocity_error, f"{state} correction_error")
    # At ẑ the target is (ẑ − z0)/σe = d − (σs − σe)/σe·β.
    ratio = ((s_start - s_end) / s_end).view(4, 1, 1, 1, 1)
    off = _n((b_c.double()[None] + ratio * beta.double()[None]).flatten(0, 1)).view(4, -1)
    _check(out.self_rollout.correction_error, (off / nd).square(), "self_rollout correction_error")

    def x0_drift(sigma_b: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # ‖z0 − σ·b‖ / ‖z0‖ − 1, (G, B)
        return _n((z0[None].double() - sigma_b.view(4, 1, 1, 1, 1) * b[None].double()).flatten(0, 1)).view(4, -1) \
            / nz0 - 1

    _check(out.teacher_forced.x0_norm_drift, x0_drift(s_start, b_c), "x0 at the start")
    _check(out.teacher_forced_end.x0_norm_drift_cfg, x0_drift(s_end, beta), "x0 at the true end")
    # At ẑ: ẑ − σe·(d + β) = z0 − σs·β.
    _check(out.self_rollout.x0_norm_drift_cfg, x0_drift(s_start, beta), "x0 at the reached state")
    assert out.steps.tolist() == [3, 2, 3, 3]
    assert torch.equal(out.sigma_start, paths[:, 0]) and torch.equal(out.sigma_end, paths[:, -1])


def test_the_reached_state_is_what_the_model_sees_at_the_end():
    """v = d + b + α·(z − z_σ): the error off the ray grows with the distance, known from e ← e + Δ·(b + α·e)."""
    z0, z1 = _latents(5)
    d = z1 - z0
    b = 0.25 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    alpha = -1.7
    paths = _paths(7)

    def velocity(z, sigma):
        s = sigma.view(-1, 1, 1, 1)
        on_ray = (1 - s) * _rows(z0, z.shape[0]) + s * _rows(z1, z.shape[0])
        return _rows(d + b, z.shape[0]) + alpha * (z - on_ray), None

    out = exposure_bias(velocity, z0, z1, paths, cfg_scale=1.0)
    e = torch.zeros((4, *SHAPE), dtype=torch.float64)
    for k in range(paths.shape[1] - 1):
        delta = (paths[:, k + 1] - paths[:, k]).double().view(4, 1, 1, 1, 1)
        e = e + delta * (b.double()[None] + alpha * e)
    nd = _n(d)[None]
    _check(out.drift, _n(e.flatten(0, 1)).view(4, -1) / nd, "drift")
    reached = _n((b.double()[None] + alpha * e).flatten(0, 1)).view(4, -1) / nd
    _check(out.self_rollout.velocity_error, reached.square(), "self-rollout velocity error")
    steer = b.double()[None] + (alpha - 1 / paths[:, -1].double().view(4, 1, 1, 1, 1)) * e
    _check(out.self_rollout.correction_error, (_n(steer.flatten(0, 1)).view(4, -1) / nd).square(), "correction")
    _check(out.teacher_forced_end.velocity_error, (_n(b)[None] / nd).square().expand(4, -1), "on the ray")
    assert (out.self_rollout.velocity_error > out.teacher_forced_end.velocity_error).all()
    _check(out.self_rollout.velocity_error_cfg, out.self_rollout.velocity_error, "w = 1: cfg is the conditional")


def test_chunked_starts_and_merged_batches_agree_with_one_pass():
    z0, z1 = _latents(8)
    g = torch.Generator().manual_seed(9)
    weights = torch.randn(SHAPE[1], SHAPE[1], generator=g) * 0.4

    def velocity(z, sigma):  # a z-dependent stand-in model: a channel mix scaled by sigma
        v = torch.einsum("oc,bchw->bohw", weights, z) * (1 + sigma.view(-1, 1, 1, 1))
        return v, 0.5 * v
    paths = _paths(10)
    whole = exposure_bias(velocity, z0, z1, paths, cfg_scale=3.0)
    chunked = exposure_bias(velocity, z0, z1, paths, cfg_scale=3.0, starts_per_forward=3)
    parts = merge([exposure_bias(velocity, z0[:2], z1[:2], paths, cfg_scale=3.0),
                   exposure_bias(velocity, z0[2:], z1[2:], paths, cfg_scale=3.0)])
    for other in (chunked, parts):
        _check(other.drift, whole.drift, "drift")
        for state in STATES:
            for name, value in vars(getattr(whole, state)).items():
                _check(vars(getattr(other, state))[name], value, f"{state}.{name}")
    summary = whole.summary()
    assert len(summary) == 4 and set(summary[0]) == {"sigma_start", "sigma_end", "steps", "drift", *STATES}
    assert summary[0]["drift"] == pytest.approx(float(whole.drift[0].mean()))
    assert isinstance(whole, ExposureBias) and whole.num_samples == SHAPE[0]


def test_rollout_paths_follow_the_soar_step_on_the_grid():
    grid = SigmaGrid(1000, 3.0)
    wanted = torch.tensor([0.93, 0.5, 0.05])
    paths = rollout_paths(grid, wanted.tolist(), num_sampling_steps=40, rollout_steps=6)
    assert paths.shape == (3, 7) and paths.dtype == torch.float32
    j = torch.tensor([int((grid.sigmas > s).sum()) for s in wanted])  # first grid index with σ_j ≤ σ
    assert torch.equal(paths[:, 0], grid.sigmas[j])
    for k in range(1, 7):
        expected, _ = grid.at(torch.clamp(1 - j / 1000 - k / 40, min=0.0))
        assert torch.equal(paths[:, k], expected)
    assert float(paths[2, -1]) == float(grid.sigmas[-1]) > 0  # clamped at the grid's end, never 0
    many = torch.rand(97, generator=torch.Generator().manual_seed(11)) * 0.98 + 0.01
    dense = rollout_paths(grid, many.tolist(), num_sampling_steps=23, rollout_steps=5)
    assert (dense[:, 0] <= many).all() and (dense[:, 0] > many - 0.01).all()
    assert (dense[:, 1:] <= dense[:, :-1]).all()
    for bad in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match="start sigmas"):
            rollout_paths(grid, bad, num_sampling_steps=40, rollout_steps=2)


def test_guidance_without_the_unconditional_branch_is_refused():
    z0, z1 = _latents()
    d = z1 - z0
    with pytest.raises(AssertionError, match="unconditional"):
        exposure_bias(_biased(d, d, None), z0, z1, _paths(), cfg_scale=2.0)
    json.dumps(exposure_bias(_biased(d, 0.1 * d, None), z0, z1, _paths(), cfg_scale=1.0).summary())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A demo run trained 4 steps, checkpoints at steps 2 and 4 (in-process, a few seconds)."""
    from soar_fast.train.run import main_train
    from tests.conftest import tiny_config

    out = tmp_path_factory.mktemp("diagnose") / "run"
    assert main_train(tiny_config(out, ["--data.demo_size=12", "--data.batch_size=3"]), None) == 0
    return out


def test_diagnose_command_compares_two_checkpoints(demo_run, tmp_path, capsys):
    from soar_fast.cli import main

    out = tmp_path / "diag"
    a, b = demo_run / "checkpoints" / "step-2", demo_run / "checkpoints" / "step-4"
    assert main(["diagnose", "--checkpoint", str(a), "--checkpoint", str(b), "--samples", "5",
                 "--sigmas", "0.9,0.45", "--rollout-steps", "2", "--out", str(out),
                 "--soar.num_sampling_steps=30"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "diagnose.json") in printed and str(out / "diagnose.png") in printed
    result = json.loads((out / "diagnose.json").read_text())
    assert [e["step"] for e in result["checkpoints"]] == [2, 4]
    s = result["settings"]
    # The run's saved config (its CFG, the override's S) and its own demo cache, 5 of its samples.
    assert (s["samples"], s["cfg_scale"], s["sampling_steps"], s["rollout_steps"]) == (5, 4.5, 30, 2)
    assert s["data"]["cache"] == str(demo_run / "demo-data" / "cache")
    for entry in result["checkpoints"]:
        assert [p["steps"] for p in entry["points"]] == [2, 2]
        for p in entry["points"]:
            assert 0 < p["sigma_end"] < p["sigma_start"] <= 0.9
            assert p["drift"] > 0 and all(p[state]["velocity_error"] > 0 for state in STATES)
    first, second = (e["points"][0]["teacher_forced"]["velocity_error"] for e in result["checkpoints"])
    assert first != second  # two steps of training moved the weights
    from PIL import Image

    assert Image.open(out / "diagnose.png").size[0] > 500


def test_diagnose_api_is_batch_independent_and_reads_a_jsonl(demo_run, tmp_path):
    from soar_fast.config_io import load_config
    from soar_fast.eval.diagnose import diagnose_checkpoints

    cfg = load_config(str(demo_run / "config.toml"))
    ckpt = [str(demo_run / "transformer")]
    kw = {"samples": 6, "sigmas": (0.7,), "rollout_steps": 3, "cfg_scale": 2.0, "output_dir": str(tmp_path / "d")}
    by_three = diagnose_checkpoints(cfg, ckpt, batch_size=3, labels=["final"], **kw)
    by_two = diagnose_checkpoints(cfg, ckpt, batch_size=2, **kw)
    on_the_fly = diagnose_checkpoints(cfg, ckpt, batch_size=3, data_jsonl=str(demo_run / "demo-data" / "data.jsonl"),
                                      **kw)
    assert by_three["checkpoints"][0]["label"] == "final" and by_three["checkpoints"][0]["step"] is None
    assert on_the_fly["settings"]["data"]["kind"] == "on-the-fly"
    p3 = by_three["checkpoints"][0]["points"][0]
    for other in (by_two, on_the_fly):
        p = other["checkpoints"][0]["points"][0]
        assert p["drift"] == pytest.approx(p3["drift"], rel=1e-4)
        assert p["self_rollout"]["velocity_error_cfg"] == pytest.approx(p3["self_rollout"]["velocity_error_cfg"],
                                                                         rel=1e-4)


def test_diagnose_usage_errors_are_one_line(demo_run, tmp_path, capsys):
    from soar_fast.cli import main

    ckpt = str(demo_run / "checkpoints" / "step-2")
    assert main(["diagnose", "--checkpoint", ckpt, "--sigmas", "0.5,1.5", "--out", str(tmp_path)]) == 2
    assert "start sigmas" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["diagnose", "--checkpoint", ckpt, "--sigmas", "a,b"]) == 2
    assert "--sigmas" in capsys.readouterr().err


def test_diagnose_takes_a_lora_checkpoint_as_its_merged_transformer(tmp_path):
    """A LoRA run's checkpoint is diagnosed as base + adapter: the same numbers as its `export --merge`."""
    from soar_fast.cli import main
    from soar_fast.config_io import load_config
    from soar_fast.eval.diagnose import diagnose_checkpoints, run_folder_of
    from soar_fast.train.run import main_train
    from tests.conftest import tiny_config
    from tests.tolerances import STEP_LOSS_RTOL

    run = tmp_path / "lora-run"
    assert main_train(tiny_config(run, ["--data.demo_size=12", "--data.batch_size=3", "--lora.rank=4",
                                        "--lora.init=false", "--train.max_steps=2"]), None) == 0
    assert main(["export", "--merge", str(run), str(tmp_path / "merged")]) == 0
    assert run_folder_of(str(run / "lora")) == run
    cfg = load_config(str(run / "config.toml"))
    kw = {"samples": 3, "sigmas": (0.7,), "rollout_steps": 2, "cfg_scale": 2.0, "output_dir": str(tmp_path / "d")}
    got = diagnose_checkpoints(cfg, [str(run / "checkpoints" / "step-2"), str(run), str(tmp_path / "merged")], **kw)
    points = [c["points"][0] for c in got["checkpoints"]]
    for p in points[:2]:
        assert p["drift"] == pytest.approx(points[2]["drift"], rel=STEP_LOSS_RTOL)
        assert p["self_rollout"]["velocity_error_cfg"] == pytest.approx(
            points[2]["self_rollout"]["velocity_error_cfg"], rel=STEP_LOSS_RTOL)
