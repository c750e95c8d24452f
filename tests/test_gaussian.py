"""The Gaussian process against the closed forms of the DDPM and DDIM papers."""

import math

import numpy as np
import pytest
import torch

from udm.processes import Gaussian
from udm.processes.gaussian import cosine_alphabar
from udm.samplers import Mixed


def betas_of(process):
    ab = process.alphabar
    return 1 - ab[1:] / ab[:-1]


def test_linear_schedule_is_ddpm():
    p = Gaussian(T=1000, schedule="linear")
    betas = betas_of(p)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-9)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-9)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(p.alphabar[1:].numpy(), expected, rtol=1e-12)
    assert p.alphabar[0] == 1 and p.b[0] == 0


def test_cosine_schedule_follows_improved_ddpm():
    T, s = 1000, 0.008
    ab = cosine_alphabar(T).numpy()
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 10, 500, 900):
        assert ab[t] == pytest.approx(f(t) / f(0), rel=1e-9)
    assert (1 - ab[1:] / ab[:-1]).max() <= 0.999 + 1e-12


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_forward_matches_q_xt_given_x0(schedule):
    p = Gaussian(T=1000, schedule=schedule).double()
    x0 = torch.rand(4, 1, 5, 5, dtype=torch.float64) * 2 - 1
    for t_int in (1, 250, 1000):
        t = torch.full((4,), t_int)
        ab = p.alphabar[t_int]
        mean = p(x0, t, torch.zeros_like(x0))
        torch.testing.assert_close(mean, ab.sqrt() * x0, rtol=0, atol=1e-14)
        # the spread: 20k draws of one pixel have variance 1 - alphabar_t
        x0_one = x0[:1].expand(20000, -1, -1, -1)
        xt = p(x0_one, torch.full((20000,), t_int), p.sample_noise(x0_one))
        var = xt[:, 0, 0, 0].var().item()
        assert var == pytest.approx((1 - ab).item(), rel=0.05)


def test_inverse_recovers_eps_exactly():
    p = Gaussian().double()
    x0 = torch.rand(8, 1, 6, 6, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.randint(1, 1001, (8,))
    torch.testing.assert_close(p.inverse(x0, p(x0, t, eps), t), eps, rtol=0, atol=1e-10)


@pytest.mark.parametrize("parametrization", ["eps", "x0", "v"])
def test_each_parametrization_maps_its_target_back_to_x0(parametrization):
    p = Gaussian(parametrization=parametrization, clip_denoised=False).double()
    x0 = torch.rand(8, 1, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.randint(1, 1001, (8,))
    xt = p(x0, t, eps)
    torch.testing.assert_close(p.x0_hat(p.target(x0, t, eps), xt, t), x0, rtol=0, atol=1e-9)
    assert p.loss(p.target(x0, t, eps), x0, xt, t, eps) == 0


def posterior(p, x0, xt, t, s):
    """q(x_s | x_t, x0) of the DDPM paper (eq. 6-7), written for a jump s < t."""
    ab_t, ab_s = p.alphabar[t], p.alphabar[s]
    beta = 1 - ab_t / ab_s
    mean = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (ab_t / ab_s).sqrt() * (1 - ab_s) / (1 - ab_t) * xt
    var = (1 - ab_s) / (1 - ab_t) * beta
    return mean, var


@pytest.mark.parametrize("t_int,s_int", [(1, 0), (2, 1), (500, 499), (1000, 999), (1000, 980), (300, 100)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_step_is_the_posterior(t_int, s_int, schedule):
    p = Gaussian(schedule=schedule).double()
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    xt = p(x0, torch.full((3,), t_int), torch.randn_like(x0))
    t, s = torch.full((3,), t_int), torch.full((3,), s_int)
    mean, var = posterior(p, x0, xt, t_int, s_int)
    beta = 1 - p.alphabar[t_int] / p.alphabar[s_int]
    for seed in (0, 1):  # the step draws z from its generator: x_s - mean must be the closed-form spread times that z
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

        def step(variance):
            return Mixed(eta=1.0, variance=variance)(p, xt, x0, t, s, torch.Generator().manual_seed(seed))

        # eta = 1: mean and spread of DDPM's posterior variance (beta tilde)
        torch.testing.assert_close(step("posterior"), mean + var.sqrt() * z, rtol=0, atol=1e-12)
        # variance='beta': the same mean, sigma^2 = beta_t (one-jump beta for s < t - 1), no noise into x_0
        torch.testing.assert_close(step("beta"), mean + (beta.sqrt() if s_int > 0 else 0) * z, rtol=0, atol=1e-12)


def test_ddim_sigma_matches_the_paper():
    p = Gaussian().double()
    t, s = torch.tensor([700]), torch.tensor([600])
    ab_t, ab_s = p.alphabar[700], p.alphabar[600]
    for eta in (0.0, 0.3, 1.0):
        sigma = eta * ((1 - ab_s) / (1 - ab_t)).sqrt() * (1 - ab_t / ab_s).sqrt()
        r_eps, r_z = p.noise_ratio(t, s, eta)
        assert r_z.item() * p.b[600].item() == pytest.approx(sigma.item(), rel=1e-12)
        assert (r_eps**2 + r_z**2).item() == pytest.approx(1.0, abs=1e-12)
