"""The one reverse loop: oracles must recover x0, and an exact score must give the right distribution."""

import pytest
import torch

from udm.errors import UdmError
from udm.processes import Gaussian
from udm.samplers import (DDIM, DDPM, Baseline, DPMSolver, DPMSolver2M, Euler, Explicit, Improved, Inverse, Mixed, Naive,
                          Power, Sampler, SolverTime, Uniform)
from udm.samplers.grids import grid_named


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
    out = DDIM(steps=steps, eta=0.0)(p, oracle(p, x0), x_T)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_ddim_oracle_in_float32_and_with_explicit_timesteps():
    p = Gaussian()
    x0 = torch.rand(4, 1, 6, 6) * 2 - 1
    out = Sampler(Mixed(eta=0.0), grid=Explicit([999, 640, 300, 20, 3]))(p, oracle(p, x0), torch.randn_like(x0))
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


@pytest.mark.parametrize("eta,variance", [(1.0, "posterior"), (0.5, "posterior"), (1.0, "beta")])
def test_stochastic_samplers_with_an_oracle_still_end_at_x0(eta, variance):
    # with the true x0 every step's x0_hat is exact, so noise never reaches x_0
    p = Gaussian().double()
    x0 = torch.rand(4, 1, 6, 6, dtype=torch.float64) * 2 - 1
    g = torch.Generator().manual_seed(1)
    out = Sampler(Mixed(eta=eta, variance=variance), steps=20)(p, oracle(p, x0), torch.randn_like(x0), generator=g)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "sampler",
    [DDPM(variance="posterior"), DDPM(variance="beta"), DDIM(steps=None, eta=0.0), DDIM(steps=None, eta=0.5)],
    ids=["ddpm-posterior", "ddpm-beta", "ddim", "ddim-eta0.5"],
)
def test_exact_score_samples_the_data_distribution(sampler):
    # 1-D data x0 ~ N(mu, s^2): E[eps | x_t] = b_t (x_t - a_t mu) / (a_t^2 s^2 + b_t^2) exactly.
    # All T steps: with coarse steps DDIM's discretization error is real (std 0.188 at 100 steps).
    mu, s, n = 0.3, 0.2, 20000
    p = Gaussian(clip_denoised=False).double()

    def model(xt, t):
        a, b = p.a[t].view(-1, 1), p.b[t].view(-1, 1)
        return b * (xt - a * mu) / (a**2 * s**2 + b**2)

    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 1, dtype=torch.float64, generator=g)
    x = sampler(p, model, x_T, generator=g)
    assert x.mean().item() == pytest.approx(mu, abs=4 * s / n**0.5 + 2e-3)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_timesteps_start_at_T_and_end_above_zero():
    p1000, p10 = Gaussian(T=1000), Gaussian(T=10)
    assert Uniform()(p1000, 4) == [1000, 750, 500, 250]
    assert Uniform()(p10) == list(range(10, 0, -1))
    assert Explicit([900, 10])(p1000) == [900, 10]
    assert Uniform()(p1000, 4, 500) == [500, 375, 250, 125]
    assert Uniform()(p10, None, 3) == [3, 2, 1]
    # a sampler's grid is the one it runs on
    assert DDIM(steps=4).timesteps(p1000) == [1000, 750, 500, 250] and DDPM().timesteps(p10, 3) == [3, 2, 1]


def test_the_power_grid_is_t_i_equal_start_times_i_over_n_to_the_power():
    p50, p1000 = Gaussian(T=50), Gaussian(T=1000)
    for steps in (1, 4, 7, 16, 50):  # power 1 is the uniform grid
        assert Power(1.0)(p50, steps) == Uniform()(p50, steps)
    for T, steps in ((100, 40), (1000, 400), (1000, 800)):  # where 100 * (23 / 40) would round to 57, not 58
        assert Power(1.0)(Gaussian(T=T), steps) == Uniform()(Gaussian(T=T), steps)
    assert Power(0.6)(p50, 4) == [50, 42, 33, 22]  # round(50 (i/4)^0.6)
    assert Power(2.0)(p1000, 4) == [1000, 562, 250, 62]  # round(1000 (i/4)^2), 562.5 -> 562 (half to even)
    assert Power(0.5)(p1000, 2, 400) == [400, 283]  # from a lower start
    for power in (0.3, 0.6, 1.5, 2.0):  # nested: the grid at N is its grid at k N taken every k-th time
        for n, k in ((4, 2), (4, 4), (2, 8), (5, 3)):
            assert Power(power)(p1000, n) == Power(power)(p1000, k * n)[::k]
    # rounding would repeat times: each later one moves down, the grid stays strictly decreasing and >= 1
    assert Power(0.3)(p50, 50) == list(range(50, 0, -1))
    ts = Power(3.0)(p50, 30)
    assert len(ts) == 30 and ts[0] == 50 and ts[-1] >= 1 and all(a > b for a, b in zip(ts, ts[1:]))
    # by name, through every sampler that takes a grid
    assert Improved(steps=4, grid="power", power=0.6).timesteps(p50) == [50, 42, 33, 22]
    assert Naive(steps=4, grid="power", power=0.6).timesteps(p50) == [50, 42, 33, 22]
    assert Euler(steps=4, grid="power", power=2.0).timesteps(p1000) == [1000, 562, 250, 62]
    assert DDIM(steps=4, grid="power", power=2.0).timesteps(p1000) == [1000, 562, 250, 62]


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: Power(0.0), "exponent must be a number > 0, got 0.0"),
        (lambda: Power(float("nan")), "exponent must be a number > 0"),
        (lambda: Power("half"), "exponent must be a number > 0, got 'half'"),
        (lambda: Power(True), "exponent must be a number > 0, got True"),
        (lambda: grid_named("uniform", power=0.5), r"power shapes the power grid only; grid='uniform' does not use it"),
        (lambda: Improved(grid="karras", power=0.5), r"power shapes the power grid only; grid='karras'"),
        (lambda: grid_named("power", rho=5.0), "rho shapes the Karras grid only; grid='power'"),
        (lambda: grid_named(Uniform(), power=0.5), r"give them to the grid object"),
    ],
    ids=["zero", "nan", "text", "bool", "power-on-uniform", "power-on-karras", "rho-on-power", "power-with-object"],
)
def test_a_power_the_grid_cannot_use_is_refused(make, message):
    with pytest.raises(UdmError, match=message):
        make()


def test_sampling_from_t_start_visits_only_steps_below_it():
    p, seen = Gaussian(T=100), []
    x0 = torch.rand(3, 2, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 2, dtype=torch.float64)
    x_t = p(x0, torch.full((3,), 40), eps)

    def oracle(xt, t):
        seen.append(int(t[0]))
        return p.inverse(x0, xt, t)

    x = DDIM(steps=8)(p, oracle, x_t, t_start=40)
    assert seen == [40, 35, 30, 25, 20, 15, 10, 5]
    torch.testing.assert_close(x, x0)


@pytest.mark.parametrize(
    "grid,message",
    [
        (lambda p: Uniform()(p, 0), "steps must lie in 1..1000"),
        (lambda p: Uniform()(p, 1001), "steps must lie in 1..1000"),
        (lambda p: Uniform()(p, 11, 10), "steps must lie in 1..10"),
        (lambda p: Uniform()(p, None, 0), "starting step must lie in 1..T"),
        (lambda p: Explicit([10, 20])(p), "strictly decreasing"),
        (lambda p: Explicit([1001, 5])(p), "must lie in 1..1000"),
        (lambda p: Explicit([])(p), "empty"),
    ],
    ids=["steps-0", "steps-above-T", "steps-above-start", "start-0", "increasing", "above-T", "empty"],
)
def test_bad_timesteps_are_refused(grid, message):
    with pytest.raises(UdmError, match=message):
        grid(Gaussian(T=1000))


def test_gaussian_declares_the_mixed_step_and_unknown_variances_are_refused():
    # what the old method='auto' resolved to ('mixed'): a Gaussian is invertible with N(0, I) noise
    p = Gaussian()
    assert p.capabilities.invertible and p.capabilities.gaussian_noise
    DDIM(eta=0.5).check(p)  # the mixed step with fresh noise is accepted
    with pytest.raises(UdmError, match="variance='fancy' does not apply to Gaussian.*'posterior', 'beta'"):
        Sampler(Mixed(eta=1.0, variance="fancy")).check(p)


def test_baseline_and_inverse_are_the_mixed_step_at_r_1_and_r_0():
    p = Gaussian().double()
    x0 = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    t, s = torch.tensor([600, 600]), torch.tensor([400, 400])
    xt = p(x0, t, torch.randn_like(x0))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    z = torch.randn(x0.shape, generator=g(), dtype=torch.float64)  # the z a step draws from g()
    torch.testing.assert_close(Inverse()(p, xt, x0, t, s), Mixed(eta=0.0)(p, xt, x0, t, s, g()))
    torch.testing.assert_close(Baseline()(p, xt, x0, t, s, g()), p(x0, s, z))


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
    ts = SolverTime()(process, 8)
    ours = DPMSolver(steps=8)(process, model, x_T)

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
    ddim = DDIM(steps=10)(process, model, x_T).std()
    dpm = DPMSolver(steps=10)(process, model, x_T).std()
    assert abs(dpm - 0.2) < 0.01 < abs(ddim - 0.2) / 4  # 0.196 vs DDIM's 0.141 at 10 evaluations


def test_dpm_solver_2m_applies_to_cold_processes_and_refuses_tokens():
    from udm.processes import Blur, TokenMask

    blur = Blur(T=20, prior_noise=0.0)
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    exact = lambda x, t: x0  # noqa: E731  an oracle: the extrapolation of a constant is the constant
    out = DPMSolver(steps=7)(blur, exact, blur.prior(x0))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    mask = TokenMask(vocab_size=10, length=4, mask_id=9)
    with pytest.raises(UdmError, match="DPM-Solver.*needs real-valued data, which TokenMask"):
        Sampler(Inverse(), steps=2, transform=DPMSolver2M())(
            mask, lambda x, t: torch.zeros(*x.shape, 10), mask.prior(torch.zeros(2, 4, dtype=torch.long)))
    with pytest.raises(UdmError, match="extrapolates x0_hat for the inverse step"):  # the baseline step has no eps_hat
        Sampler(Baseline(), steps=2, transform=DPMSolver2M())(blur, exact, blur.prior(x0))
