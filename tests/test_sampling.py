"""The one reverse loop: oracles must recover x0, and an exact score must give the right distribution."""

import pytest
import torch

import udm
from udm.processes import Gaussian
from udm.sampling import make_timesteps, resolve_method


def oracle(process, x0):
    """model(x_t, t) returning the raw output of a perfect net for the known x0."""

    def model(xt, t):
        eps = process.inverse(x0, xt, t)
        return process.target(x0, t, eps)

    return model


@pytest.mark.parametrize("parametrization", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [None, 50, 7, 1])
def test_ddim_with_an_oracle_recovers_x0(parametrization, schedule, steps):
    p = Gaussian(schedule=schedule, parametrization=parametrization, clip_denoised=False).double()
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    x_T = torch.randn_like(x0) * 3  # any start
    out = udm.sample(p, oracle(p, x0), x_T, steps=steps, eta=0.0)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_ddim_oracle_in_float32_and_with_explicit_timesteps():
    p = Gaussian()
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    out = udm.sample(p, oracle(p, x0), torch.randn_like(x0), timesteps=[999, 640, 300, 20, 3])
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eta,variance", [(1.0, "ddim"), (0.5, "ddim"), (1.0, "beta")])
def test_stochastic_samplers_with_an_oracle_still_end_at_x0(eta, variance):
    # with the true x0 every step's x0_hat is exact, so noise never reaches x_0
    p = Gaussian().double()
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    g = torch.Generator().manual_seed(1)
    out = udm.sample(p, oracle(p, x0), torch.randn_like(x0), steps=20, eta=eta, variance=variance, generator=g)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs",
    [dict(eta=1.0), dict(eta=1.0, variance="beta"), dict(eta=0.0), dict(eta=0.5)],
    ids=["ddpm-posterior", "ddpm-beta", "ddim", "ddim-eta0.5"],
)
def test_exact_score_samples_the_data_distribution(kwargs):
    # 1-D data x0 ~ N(mu, s^2): E[eps | x_t] = b_t (x_t - a_t mu) / (a_t^2 s^2 + b_t^2) exactly.
    # All T steps: with coarse steps DDIM's discretization error is real (std 0.188 at 100 steps).
    mu, s, n = 0.3, 0.2, 20000
    p = Gaussian(clip_denoised=False).double()

    def model(xt, t):
        a, b = p.a[t].view(-1, 1), p.b[t].view(-1, 1)
        return b * (xt - a * mu) / (a**2 * s**2 + b**2)

    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 1, dtype=torch.float64, generator=g)
    x = udm.sample(p, model, x_T, generator=g, **kwargs)
    assert x.mean().item() == pytest.approx(mu, abs=4 * s / n**0.5 + 2e-3)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_timesteps_start_at_T_and_end_above_zero():
    assert make_timesteps(1000, steps=4) == [1000, 750, 500, 250]
    assert make_timesteps(10) == list(range(10, 0, -1))
    assert make_timesteps(1000, timesteps=[900, 10]) == [900, 10]
    assert make_timesteps(1000, steps=4, start=500) == [500, 375, 250, 125]
    assert make_timesteps(10, start=3) == [3, 2, 1]


def test_sampling_from_t_start_visits_only_steps_below_it():
    p, seen = Gaussian(T=100), []
    x0 = torch.rand(3, 2, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 2, dtype=torch.float64)
    x_t = p(x0, torch.full((3,), 40), eps)

    def oracle(xt, t):
        seen.append(int(t[0]))
        return p.inverse(x0, xt, t)

    x = udm.sample(p, oracle, x_t, t_start=40, steps=8)
    assert seen == [40, 35, 30, 25, 20, 15, 10, 5]
    torch.testing.assert_close(x, x0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(steps=0), "steps must lie in 1..1000"),
        (dict(steps=1001), "steps must lie in 1..1000"),
        (dict(steps=11, start=10), "steps must lie in 1..10"),
        (dict(start=0), "starting step must lie in 1..T"),
        (dict(timesteps=[10, 20]), "strictly decreasing"),
        (dict(timesteps=[1001, 5]), "must lie in 1..T"),
        (dict(timesteps=[]), "empty"),
    ],
)
def test_bad_timesteps_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_timesteps(1000, **kwargs)


def test_method_resolution():
    p = Gaussian()
    assert resolve_method(p, "auto") == "mixed"
    with pytest.raises(ValueError, match="unknown sampling method"):
        resolve_method(p, "fancy")


def test_baseline_and_inverse_are_the_mixed_step_at_r_1_and_r_0():
    from udm.sampling import reverse_step

    p = Gaussian().double()
    x0 = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    t, s = torch.tensor([600, 600]), torch.tensor([400, 400])
    xt = p(x0, t, torch.randn_like(x0))
    z = torch.randn_like(x0)
    torch.testing.assert_close(reverse_step(p, xt, x0, t, s, "inverse"), reverse_step(p, xt, x0, t, s, "mixed", eta=0.0, z=z))
    torch.testing.assert_close(reverse_step(p, xt, x0, t, s, "baseline", z=z), p(x0, s, z))


def gaussian_data_eps(process, mean, std):
    """The exact eps predictor for 1-D data N(mean, std^2): eps_hat = b_t (x_t - a_t mean) / (a_t^2 std^2 + b_t^2)."""

    def model(x, t):
        a, b = process.a[t].to(x.dtype).view(-1, 1), process.b[t].to(x.dtype).view(-1, 1)
        return b * (x - a * mean) / (a**2 * std**2 + b**2)

    return model


def test_dpm_solver_2m_matches_its_closed_form_update():
    """The loop's extrapolated inverse step equals DPM-Solver++(2M) written in (x_t, lambda) form (Lu et al. 2022, alg. 2)."""
    process = Gaussian(T=1000, schedule="linear", clip_denoised=False)
    model = gaussian_data_eps(process, 0.3, 0.2)
    x_T = torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = udm.sampling.solver_timesteps(process, 8)
    ours = udm.sample(process, model, x_T, steps=8, extrapolate="dpm_solver_2m", spacing="solver_time")

    a, b = process.a, process.b
    lam = lambda t: float(a[t].log() - b[t].log())  # noqa: E731
    x, prev = x_T, None
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [0])):
        tt = torch.full((64,), t)
        x0 = (x - b[t] * model(x, tt)) / a[t]
        if s == 0:
            x = x0
            break
        h = lam(s) - lam(t)
        D = x0 if prev is None else (1 + 1 / (2 * (lam(t) - lam(ts[i - 1])) / h)) * x0 - 1 / (2 * (lam(t) - lam(ts[i - 1])) / h) * prev
        x = b[s] / b[t] * x - a[s] * (torch.exp(torch.tensor(-h, dtype=torch.float64)) - 1) * D
        prev = x0
    torch.testing.assert_close(ours, x, rtol=1e-10, atol=1e-10)


def test_dpm_solver_2m_needs_far_fewer_steps_than_ddim():
    process = Gaussian(T=1000, schedule="cosine")
    model = gaussian_data_eps(process, 0.3, 0.2)
    x_T = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    ddim = udm.sample(process, model, x_T, steps=10).std()
    dpm = udm.sample(process, model, x_T, steps=10, extrapolate="dpm_solver_2m", spacing="solver_time").std()
    assert abs(dpm - 0.2) < 0.01 < abs(ddim - 0.2) / 4  # 0.196 vs DDIM's 0.141 at 10 evaluations


def test_dpm_solver_2m_applies_to_cold_processes_and_refuses_tokens():
    from udm.processes import Blur, TokenMask

    blur = Blur(T=20, prior_noise=0.0)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    exact = lambda x, t: x0  # noqa: E731  an oracle: the extrapolation of a constant is the constant
    out = udm.sample(blur, exact, blur.prior(x0), steps=7, extrapolate="dpm_solver_2m", spacing="solver_time")
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    mask = TokenMask(vocab_size=10, length=4, mask_id=9)
    with pytest.raises(ValueError, match="real-valued"):
        udm.sample(mask, lambda x, t: torch.zeros(*x.shape, 10), mask.prior(torch.zeros(2, 4, dtype=torch.long)),
                   steps=2, extrapolate="dpm_solver_2m")
    with pytest.raises(ValueError, match="unknown spacing"):
        udm.sample(blur, exact, blur.prior(x0), steps=2, spacing="log")
