"""The evaluation sampler: schedule, fused CFG-Euler step, analytic endpoint, per-seed determinism,
and loading a trained checkpoint."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from soar_fast.config import EvalConfig, ModelConfig
from soar_fast.eval.pipeline import load_pipeline
from soar_fast.eval.sampler import FlowSampler, initial_noise, sampling_schedule
from soar_fast.kernels.cfg_rollout import cfg_rollout
from tests.tolerances import assert_close

SD35_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
TINY_EVAL = EvalConfig(steps=3, resolution=32, max_sequence_length=8, batch_size=4, cfg_scale=4.5)


def test_schedule_is_the_sd3_pipelines():
    scheduler = FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER)
    scheduler.set_timesteps(40)
    sigmas, timesteps = sampling_schedule(SD35_SCHEDULER, 40, image_seq_len=1024)
    assert sigmas.shape == (41,) and timesteps.shape == (40,)
    assert torch.equal(sigmas, scheduler.sigmas) and torch.equal(timesteps, scheduler.timesteps)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_fused_cfg_euler_step_equals_eager_scheduler_step():
    """One step of the sampler (fused kernel) == diffusers' pipeline: CFG combine, then scheduler.step."""
    gen = torch.Generator().manual_seed(0)
    z, v_u, v_c = (torch.randn(3, 4, 5, 6, generator=gen) for _ in range(3))
    scheduler = FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER)
    scheduler.set_timesteps(7)
    for i in (0, 3, 6):  # first step (σ0 = 1), a middle one, the last (to σ = 0)
        s0, s1 = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        fused = cfg_rollout(z, v_u, v_c, s0.expand(3).contiguous(), s1.expand(3).contiguous(), cfg_scale=4.5,
                            kind="ode", noise_scale=0.0, sigma_hat_at_one=float(scheduler.sigmas[1]))
        scheduler._step_index = i
        eager = scheduler.step(v_u + 4.5 * (v_c - v_u), scheduler.timesteps[i], z, return_dict=False)[0]
        exact = z.double() + (v_u.double() + 4.5 * (v_c.double() - v_u.double())) * (s1.double() - s0.double())
        assert_close(fused, eager, msg=f"step {i} vs diffusers")
        assert_close(fused, exact, msg=f"step {i} vs float64")


def _toy_velocity(x_cond: torch.Tensor, x_uncond: torch.Tensor):
    """The exact straight-line field towards x_cond (cond rows: embedding flag 1) or x_uncond (flag 0)."""
    def velocity(z, timesteps, embeds, pooled):
        cond = embeds[:, 0, 0] > 0.5
        b = x_cond.shape[0]
        target = torch.where(cond.view(-1, 1, 1, 1), x_cond.repeat(z.shape[0] // b, 1, 1, 1),
                             x_uncond.repeat(z.shape[0] // b, 1, 1, 1))
        sigma = (timesteps / 1000).view(-1, 1, 1, 1)
        return (z - target) / sigma
    return velocity


@pytest.mark.parametrize("cfg_scale", [1.0, 4.5])
def test_sampler_with_perfect_velocity_reaches_analytic_endpoint(cfg_scale):
    """Euler on the exact field (z − x*)/σ lands on x* whatever the step count; with CFG the combined
    field points at x_u + w·(x_c − x_u)."""
    gen = torch.Generator().manual_seed(1)
    x_c, x_u, noise = (torch.randn(2, 4, 6, 6, generator=gen) for _ in range(3))
    sampler = FlowSampler(_toy_velocity(x_c, x_u), SD35_SCHEDULER, steps=5, cfg_scale=cfg_scale)
    cond, null = torch.ones(2, 1, 1), torch.zeros(1, 1, 1)
    out = sampler.sample(noise, cond, torch.zeros(2, 1), null, torch.zeros(1, 1))
    expected = x_c.double() if cfg_scale == 1.0 else x_u.double() + cfg_scale * (x_c.double() - x_u.double())
    assert_close(out, expected)


def test_initial_noise_depends_only_on_the_seed():
    both = initial_noise([3, 4], (4, 2, 2), "cpu")
    assert torch.equal(both[1], initial_noise([4], (4, 2, 2), "cpu")[0])
    assert not torch.equal(both[0], both[1])


@pytest.fixture(scope="module")
def tiny_pipe():
    return load_pipeline(ModelConfig(), TINY_EVAL, torch.device("cpu"))


def test_sampler_is_deterministic_per_seed(tiny_pipe):
    prompts = ["a red circle", "a cat"]
    first = tiny_pipe.generate(prompts, [5, 6])
    assert first.shape == (2, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, tiny_pipe.generate(prompts, [5, 6]))
    # The same (prompt, seed) alone in its batch: the same image (up to matmul blocking).
    assert_close(tiny_pipe.generate(prompts[1:], [6])[0], first[1])


def test_trained_checkpoint_loads_into_the_sampler(tmp_path, tiny_pipe):
    from soar_fast.models.transformer import ModelFolderError, build_transformer
    from soar_fast.train.checkpoint import save_checkpoint

    trained = build_transformer(ModelConfig())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(2)
        for p in trained.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ckpt = save_checkpoint(str(tmp_path), 7, transformer=trained, state={"step": 7})
    for folder in (ckpt.path, ckpt.transformer_dir):  # a checkpoints/step-N folder or its transformer/
        pipe = load_pipeline(ModelConfig(), dataclasses.replace(TINY_EVAL, checkpoint=folder), torch.device("cpu"))
        for name, p in pipe.transformer.state_dict().items():
            assert torch.equal(p, trained.state_dict()[name]), name
    images = pipe.generate(["a cat"], [1])
    assert not torch.allclose(images, tiny_pipe.generate(["a cat"], [1]))  # not the base weights
    direct = load_pipeline(ModelConfig(), TINY_EVAL, torch.device("cpu"), transformer=trained)
    assert torch.equal(images, direct.generate(["a cat"], [1]))
    with pytest.raises(ModelFolderError):
        load_pipeline(ModelConfig(), dataclasses.replace(TINY_EVAL, checkpoint=str(tmp_path / "missing")),
                      torch.device("cpu"))


def test_sampler_matches_diffusers_sd3_pipeline(tmp_path):
    """Same model, embeddings and initial noise: our latents == StableDiffusion3Pipeline's (float32)."""
    from diffusers import StableDiffusion3Pipeline

    from soar_fast.models.export import export_tiny_pipeline

    export_tiny_pipeline(str(tmp_path))
    ours = load_pipeline(ModelConfig(path=str(tmp_path)), TINY_EVAL, torch.device("cpu"))
    ref = StableDiffusion3Pipeline.from_pretrained(str(tmp_path), local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    embeds, pooled = ours.encode(["a cat", "a red circle"])
    null_embeds, null_pooled = ours.null_embedding()
    noise = initial_noise([3, 4], ours.latent_shape, "cpu")
    got = ours.sampler.sample(noise, embeds, pooled, null_embeds, null_pooled)
    want = ref(prompt_embeds=embeds, pooled_prompt_embeds=pooled,
               negative_prompt_embeds=null_embeds.expand(2, -1, -1),
               negative_pooled_prompt_embeds=null_pooled.expand(2, -1), latents=noise.clone(),
               num_inference_steps=TINY_EVAL.steps, guidance_scale=TINY_EVAL.cfg_scale, output_type="latent").images
    assert_close(got, want)
