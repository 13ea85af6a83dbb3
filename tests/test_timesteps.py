"""Timestep densities and loss weights agree with diffusers' SD3 training utilities draw for draw."""

import ast
import math
from pathlib import Path

import pytest
import torch
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

import soar_fast.soar
from soar_fast.soar import loss_weight, sample_t
from tests.tolerances import assert_close

SCHEMES = ["logit_normal", "mode", "cosmap", "uniform", "sigma_sqrt"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sample_t_matches_diffusers_draw_for_draw(scheme):
    kw = {"logit_mean": 0.3, "logit_std": 0.8, "mode_scale": 1.29}
    ours = sample_t(37, scheme, generator=torch.Generator().manual_seed(11), **kw)
    theirs = compute_density_for_timestep_sampling(scheme, 37, generator=torch.Generator().manual_seed(11),
                                                   **kw)
    assert ours.dtype == torch.float32 and ours.shape == (37,)
    assert torch.equal(ours, theirs)


def test_sample_t_logit_normal_shape_of_density():
    t = sample_t(20011, "logit_normal", generator=torch.Generator().manual_seed(2), logit_mean=0.7)
    assert bool(((t > 0) & (t < 1)).all())
    # The median of sigmoid(N(0.7, 1)) is sigmoid(0.7).
    assert abs(float(t.median()) - 1 / (1 + math.exp(-0.7))) < 0.01


def test_sample_t_default_generator_device():
    t = sample_t(5, "uniform")
    assert t.device.type == "cpu" and bool(((t >= 0) & (t < 1)).all())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loss_weight_matches_diffusers_and_formula(scheme):
    sigma = torch.empty(43).uniform_(0.003, 1.0, generator=torch.Generator().manual_seed(4))
    w = loss_weight(sigma, scheme)
    assert w.dtype == torch.float32 and w.shape == sigma.shape
    assert_close(w, compute_loss_weighting_for_sd3(scheme, sigma.clone()))
    s = sigma.double()
    want = {"sigma_sqrt": s**-2, "cosmap": 2 / (math.pi * (1 - 2 * s + 2 * s * s))}
    want = want.get(scheme, torch.ones_like(s))
    assert_close(w, want)


def test_loss_weight_upcasts_bf16_sigma():
    sigma = torch.tensor([0.37, 0.81, 0.05]).bfloat16()
    w = loss_weight(sigma, "sigma_sqrt")
    assert w.dtype == torch.float32
    assert_close(w, sigma.double() ** -2)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="logit_normal"):
        sample_t(3, "lognormal")
    with pytest.raises(ValueError, match="cosmap"):
        loss_weight(torch.rand(3), "cos_map")


def test_soar_package_does_not_import_diffusers():
    # Parsed rather than imported in a fresh interpreter: the same answer without a second torch start-up.
    for path in Path(soar_fast.soar.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            banned = [n for n in names if n.split(".")[0] in ("diffusers", "transformers")]
            assert not banned, f"{path.name} imports {banned}"
