"""The affine Gaussian process over its schedules: closed forms, parametrizations, training densities and weights,
the old VP/VE numbers, and the numerical order of Euler, Heun and DPM-Solver++ against the exact ODE solution."""

import json
import math

import pytest
import torch

from udm.errors import UdmError
from udm.processes import Affine, Blur, Gaussian, VarianceExploding
from udm.processes.base import per_sample
from udm.processes.schedules import CosineVP, Flow, Geometric, Schedule, vp_cosine, vp_linear
from udm.samplers import DDIM, DDPM, DPMSolver, Euler, Heun, HeunStep, Karras, LogSNR
from udm.samplers.grids import time_tensor

SCHEDULES = {
    "flow": lambda: Flow(),
    "edm": lambda: Geometric(0.002, 80.0, 1e-3),
    "vp_linear": lambda: vp_linear(1000),
    "vp_cosine": lambda: vp_cosine(1000),
    "cosine_continuous": lambda: CosineVP(),
}
PARAMETRIZATIONS = ("eps", "x0", "v", "velocity", "edm")


def gaussian_data(n=6, d=12, mu=0.3, s=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mu + s * torch.randn(n, d, generator=g, dtype=torch.float64), g


def exact_denoiser(process, mu=0.3, s=0.5):
    """model(x_t, t) -> E[x0 | x_t] for x0 ~ N(mu, s^2 I), as a parametrization='x0' net without input scaling."""

    def model(x_t, t):
        a, b = process.coefficients(t)
        a, b = per_sample(a, x_t), per_sample(b, x_t)
        return mu + a * s**2 * (x_t - a * mu) / (a**2 * s**2 + b**2)

    return model


def exact_flow_map(process, x_T, t_from, mu=0.3, s=0.5):
    """The probability-flow ODE's solution from t_from to the data for Gaussian data: it keeps
    z = (x_t - a_t mu) / sqrt(a_t^2 s^2 + b_t^2), so x_0 = mu + s z."""
    a, b = process.coefficients(torch.tensor([t_from], dtype=torch.float64))
    return mu + s * (x_T - a * mu) / (a**2 * s**2 + b**2).sqrt()


def test_old_vp_and_ve_samples_are_unchanged_to_float32_rounding():
    """Gaussian and VarianceExploding are the affine process now; samples recorded with the classes they replaced
    (commit 9877594), same net, seed and samplers, come out identical up to a few float32 ulps: bit for bit on the
    CPU that recorded them, within 1-4 ulps on another (its vectorised exp, tanh, ... round differently)."""
    ref = torch.load("tests/data/legacy_vp_ve_samples.pt")
    net = lambda x, t: torch.tanh(x * 0.7 + t.float()[:, None, None, None] / 1000)  # noqa: E731
    processes = {"vp": Gaussian(T=100, schedule="cosine", parametrization="v"), "vpl": Gaussian(T=100), "ve": VarianceExploding(T=50)}
    for name, process in processes.items():
        samplers = {"ddpm": DDPM(steps=20), "ddim": DDIM(steps=10), "dpm": DPMSolver(steps=8),
                    "beta": DDPM(steps=20, variance="beta") if name != "ve" else DDIM(steps=3, eta=0.5)}
        for sname, sampler in samplers.items():
            g = torch.Generator().manual_seed(1)
            x = sampler(process, net, process.prior(torch.zeros(4, 1, 8, 8), g), generator=g)
            torch.testing.assert_close(x, ref[name + sname], rtol=1e-6, atol=2e-7, msg=f"{name} {sname}")


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_keep_their_closed_forms(name):
    schedule = SCHEDULES[name]()
    u = torch.tensor([0.0, 1e-4, 0.013, 0.25, 0.5, 0.77, 0.999], dtype=torch.float64)
    a2, b2 = schedule.alpha2(u), schedule.sigma2(u)
    assert float(a2[0]) == pytest.approx(1.0, abs=1e-12) and float(b2[0]) == pytest.approx(0.0, abs=1e-12)
    if schedule.variance_preserving:
        torch.testing.assert_close(a2 + b2, torch.ones_like(u), rtol=0, atol=1e-12)
    lam = schedule.log_snr(u[1:])
    assert bool((lam[1:] < lam[:-1]).all())  # log-SNR decreases in u
    torch.testing.assert_close(schedule.time_of(lam), u[1:], rtol=0, atol=1e-9)  # time_of inverts it
    # b_{t|s}^2 in the schedule's own form equals the generic b_t^2 - (a_t/a_s)^2 b_s^2
    ut, us = u[4:], u[2:5]
    generic = schedule.sigma2(ut) - schedule.alpha2(ut) / schedule.alpha2(us) * schedule.sigma2(us)
    torch.testing.assert_close(schedule.transition(schedule.alpha2(ut), schedule.sigma2(ut), schedule.alpha2(us), schedule.sigma2(us)),
                               generic, rtol=1e-9, atol=1e-12)


def test_the_schedules_say_what_they_are():
    u = torch.tensor([0.2, 0.6], dtype=torch.float64)
    torch.testing.assert_close(Flow().alpha2(u).sqrt(), 1 - u)
    torch.testing.assert_close(Flow().sigma2(u).sqrt(), u)
    edm = Geometric(0.002, 80.0, 1e-3)
    sigma = edm.sigma(torch.tensor([1e-3, 1.0], dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor([0.002, 80.0], dtype=torch.float64))
    # log sigma is affine in u above u_min: grid time is EDM's c_noise = log(sigma) / 4 up to scale and shift
    logs = edm.sigma(torch.tensor([0.1, 0.4, 0.7], dtype=torch.float64)).log()
    assert float(logs[1] - logs[0]) == pytest.approx(float(logs[2] - logs[1]), rel=1e-12)
    table = vp_linear(1000)
    process = Affine(table, T=1000)
    t = torch.tensor([1, 500, 1000])
    a2_int = process.squares(t)[0]
    a2_real = process.squares(t.double())[0]  # the interpolating closed form at the grid points
    torch.testing.assert_close(a2_real, a2_int, rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", ["flow", "edm", "vp_linear", "cosine_continuous"])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_every_parametrization_recovers_x0_and_eps(schedule, parametrization):
    if parametrization in ("eps", "edm") and schedule in ("flow", "cosine_continuous"):  # a(1) = 0 (cosine: 6e-17)
        with pytest.raises(UdmError, match="undefined where a = .* at t = T"):
            Affine(SCHEDULES[schedule](), T=1000, parametrization=parametrization)
        return
    process = Affine(SCHEDULES[schedule](), T=1000, parametrization=parametrization)
    x0, g = gaussian_data()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in (torch.full((6,), 1), torch.full((6,), 637), torch.tensor([0.4, 3.7, 250.5, 500.0, 812.25, 999.0], dtype=torch.float64)):
        x_t = process(x0, t, eps)
        out = process.target(x0, t, eps)
        torch.testing.assert_close(process.x0_hat(out, x_t, t), x0, rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(process.eps_hat(out, x_t, t), eps, rtol=1e-6, atol=1e-7)
        # ||out - target||^2 = c_t ||x0_hat - x0||^2: the scale the loss weights divide by
        wrong = out + 0.01 * torch.randn(out.shape, generator=g, dtype=torch.float64)
        lhs = (wrong - out).pow(2).sum(1)
        rhs = process.error_scale(t) * (process.x0_hat(wrong, x_t, t) - x0).pow(2).sum(1)
        torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=0)


def test_flow_velocity_is_eps_minus_x0_and_euler_is_the_flow_step():
    process = Affine(Flow(), T=10, parametrization="velocity", scale_input=False)
    x0, g = gaussian_data()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.full((6,), 7)
    torch.testing.assert_close(process.target(x0, t, eps), eps - x0)
    velocity = lambda x, t: torch.tanh(x) + t.double()[:, None] / 10  # noqa: E731 - any field
    states = []
    Euler(steps=5)(process, velocity, eps, callback=lambda step: states.append((step.t, step.s, step.x_t, step.x_s)))
    for t_int, s_int, x_t, x_s in states:  # x_s = x_t + (u_s - u_t) v(x_t, u_t)
        v = velocity(x_t, torch.full((6,), t_int))
        torch.testing.assert_close(x_s, x_t + (s_int - t_int) / 10 * v, rtol=0, atol=1e-12)


def test_the_input_scale_gives_the_net_unit_variance():
    """c_in x_t has variance sigma_data^2 (a^2 sd^2 + b^2)^-1 (a^2 sd^2 + b^2) = 1 for data of std sigma_data."""
    for name in ("flow", "edm", "vp_cosine"):
        process = Affine(SCHEDULES[name](), T=1000, parametrization="x0", sigma_data=0.5)
        g = torch.Generator().manual_seed(0)
        x0 = 0.5 * torch.randn(4000, 8, generator=g, dtype=torch.float64)
        for t_int in (10, 500, 990):
            t = torch.full((4000,), t_int)
            seen = []
            process.predict(lambda x, t: seen.append(x) or x, process(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64)), t)
            assert float(seen[0].std()) == pytest.approx(1.0, rel=0.03), (name, t_int)


def test_training_densities_follow_their_laws():
    n = 20000
    g = torch.Generator().manual_seed(0)
    logit = Affine(Flow(), T=1000, parametrization="velocity", time_density="logit_normal", density_mean=0.5, density_std=0.8)
    u = logit.sample_t(n, generator=g) / 1000
    z = torch.log(u / (1 - u))
    assert float(z.mean()) == pytest.approx(0.5, abs=0.03) and float(z.std()) == pytest.approx(0.8, abs=0.02)
    edm = Affine(Geometric(0.002, 80.0, 1e-3), T=1000, time_density="log_normal", density_mean=-1.2, density_std=1.2)
    t = edm.sample_t(n, generator=g)
    a, b = edm.coefficients(t)
    log_sigma = (b / a).log()
    inside = (log_sigma > math.log(0.002)) & (log_sigma < math.log(80))  # the tails beyond EDM's range are clipped
    assert float(inside.double().mean()) > 0.999
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.03) and float(log_sigma.std()) == pytest.approx(1.2, abs=0.03)
    strat = Affine(Flow(), T=1000, parametrization="velocity", t_sampling="stratified").sample_t(64, generator=g) / 1000
    assert sorted(int(v) for v in ((1 - strat) * 64).floor()) == list(range(64))  # one time per 1/64 slice
    anti = Affine(Flow(), T=1000, parametrization="velocity", t_sampling="antithetic").sample_t(64, generator=g) / 1000
    torch.testing.assert_close(anti[:32] + anti[32:], torch.ones(32, dtype=torch.float64))  # u and 1 - u pairs
    assert Gaussian(T=1000).sample_t(8, generator=g).dtype == torch.long  # DDPM's integer t stays


def test_loss_weights_match_their_closed_forms():
    x0, g = gaussian_data(n=5)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([3, 100, 400, 700, 990])
    for parametrization in ("eps", "v", "x0"):
        plain = Gaussian(T=1000, parametrization=parametrization).double()
        minsnr = Gaussian(T=1000, parametrization=parametrization, loss_weight="min_snr", snr_gamma=5.0).double()
        snr = plain.alphabar[t] / (1 - plain.alphabar[t])
        # Hang et al.: eps-prediction min(SNR, g)/SNR, v-prediction min(SNR, g)/(SNR + 1), x0 min(SNR, g)
        factor = {"eps": snr, "v": snr + 1, "x0": torch.ones_like(snr)}[parametrization]
        per_item = (out - plain.target(x0, t, eps)).pow(2).mean(1)
        expected = (snr.clamp(max=5.0) / factor * per_item).mean()
        torch.testing.assert_close(minsnr.loss(out, x0, None, t, eps), expected)
    edm = Affine(Geometric(0.002, 80.0, 1e-3), T=1000, parametrization="x0", loss_weight="edm", sigma_data=0.5)
    sigma = edm.coefficients(t)[1]
    expected = ((sigma**2 + 0.25) / (sigma * 0.5) ** 2 * (out - x0).pow(2).mean(1)).mean()
    torch.testing.assert_close(edm.loss(out, x0, None, t, eps), expected)


def final_error(process, sampler, steps_field=None):
    x_T, _ = gaussian_data(n=64, d=8, seed=3)
    x_T = (x_T - 0.3) / 0.5 * float(process.coefficients(torch.tensor([process.T]))[1])
    exact = exact_flow_map(process, x_T, process.T)
    return float((sampler(process, exact_denoiser(process), x_T) - exact).abs().max())


@pytest.mark.parametrize("schedule", ["edm", "vp_linear"])
def test_solvers_have_their_order_against_the_exact_ode_solution(schedule):
    """Halving the step size divides the error by ~2 (Euler), ~4 (Heun), ~8 (DPM-Solver++ 3M) on Gaussian data,
    where the probability-flow ODE is solved in closed form."""
    process = Affine(SCHEDULES[schedule](), T=1000, parametrization="x0", scale_input=False)
    grid = "karras" if schedule == "edm" else "logsnr"

    def ratio(make, n):
        return final_error(process, make(n)) / final_error(process, make(2 * n))

    if schedule == "edm":
        assert 1.6 < ratio(lambda n: Euler(steps=n, grid=grid), 40) < 2.6
        assert 3.0 < ratio(lambda n: Heun(steps=n, grid=grid), 20) < 6.0
        assert 5.0 < ratio(lambda n: DPMSolver(steps=n, order=3, grid=grid), 20)
    assert final_error(process, DPMSolver(steps=20, order=3, grid=grid)) < final_error(process, DPMSolver(steps=20, order=2, grid=grid))


def test_heun_counts_two_evaluations_per_step_and_one_into_the_data():
    process = Affine(Geometric(0.002, 80.0, 1e-3), T=1000, parametrization="x0", scale_input=False)
    calls = []
    model = exact_denoiser(process)
    x_T = 80 * torch.randn(3, 4, dtype=torch.float64)
    Heun(steps=6)(process, lambda x, t: calls.append(1) or model(x, t), x_T)
    assert len(calls) == 2 * 6 - 1
    flow = Affine(Flow(), T=1000, parametrization="x0", scale_input=False)
    calls.clear()
    model = exact_denoiser(flow)
    Heun(steps=6, grid="uniform")(flow, lambda x, t: calls.append(1) or model(x, t), torch.randn(3, 4, dtype=torch.float64))
    assert len(calls) == 2 * 6 - 2  # out of sigma = inf (u = 1) and into the data: Euler steps


def test_churn_keeps_the_data_distribution():
    """EDM's stochastic Heun with the exact denoiser still samples N(mu, s^2) (to its discretization error: 40 steps
    give std 0.511 with and without churn; 12 steps 0.571 without, 0.636 with S_churn = 10)."""
    process = Affine(Geometric(0.002, 80.0, 1e-3), T=1000, parametrization="x0", scale_input=False)
    g = torch.Generator().manual_seed(0)
    x_T = 80 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x = Heun(steps=40, churn=10.0, churn_min=0.05, churn_max=50)(process, exact_denoiser(process), x_T, generator=g)
    assert float(x.mean()) == pytest.approx(0.3, abs=0.02) and float(x.std()) == pytest.approx(0.5, abs=0.02)
    calls = []
    model = exact_denoiser(process)
    Heun(steps=10, churn=10.0)(process, lambda x, t: calls.append(t.clone()) or model(x, t), x_T[:4], generator=g)
    assert len(calls) == 19 and not float(calls[2][0]).is_integer()  # the net saw the raised times t_hat


def test_continuous_knobs_are_refused_where_they_do_not_apply():
    blur = Blur(T=10)
    with pytest.raises(UdmError, match="Karras.*Blur"):
        Euler(steps=4, grid="karras")(blur, lambda x, t: x, torch.zeros(1, 1, 8, 8))
    with pytest.raises(UdmError, match="Heun.*Blur"):
        Heun(steps=4, grid="uniform").check(blur)
    with pytest.raises(UdmError, match="rho shapes the Karras grid only"):
        Euler(grid="uniform", rho=3.0)
    with pytest.raises(UdmError, match="order is 2 or 3"):
        DPMSolver(order=4)
    with pytest.raises(UdmError, match="time_density='beta' is not one of"):
        Affine(Flow(), time_density="beta")
    with pytest.raises(UdmError, match="loss_weight='snr' is not one of"):
        Affine(Flow(), loss_weight="snr")
    with pytest.raises(UdmError, match="parametrization 'score'"):
        Affine(Flow(), parametrization="score")
    with pytest.raises(UdmError, match="Karras grid needs .* sigma_max"):
        Karras(sigma_max=1e-4)(Affine(Flow(), T=100, parametrization="x0"), steps=4)


class LinearAlphabar(Schedule):
    """A user's schedule in one class: alphabar(u) = 1 - u (no closed-form time_of: the base bisects)."""

    variance_preserving = True

    def alpha2(self, u):
        return 1 - torch.as_tensor(u, dtype=torch.float64)

    def sigma2(self, u):
        return torch.as_tensor(u, dtype=torch.float64)


def test_a_new_schedule_is_one_subclass_and_one_yaml(tmp_path):
    from hydra.utils import instantiate

    from .conftest import compose_train

    (tmp_path / "process").mkdir()
    (tmp_path / "process" / "linear_alphabar.yaml").write_text(
        "_target_: udm.processes.Affine\nschedule:\n  _target_: tests.test_affine.LinearAlphabar\nT: 100\n"
        "parametrization: x0\nscale_input: false\n")
    cfg = compose_train(f"hydra.searchpath=[file://{tmp_path}]", "process=linear_alphabar", "data=digits")
    process = instantiate(cfg.process)
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(process.schedule.time_of(process.schedule.log_snr(u)), u, rtol=0, atol=1e-12)
    x_T = torch.randn(64, 4, dtype=torch.float64)
    for sampler in (Heun(steps=30, grid="logsnr"), DPMSolver(steps=30, order=3, grid="logsnr"), DDPM(steps=50)):
        x = sampler(process, exact_denoiser(process), x_T, generator=torch.Generator().manual_seed(0))
        assert float(x.mean()) == pytest.approx(0.3, abs=0.15) and 0.3 < float(x.std()) < 0.7, type(sampler).__name__
    exact = exact_flow_map(process, x_T, 100)
    errors = {name: float((sampler(process, exact_denoiser(process), x_T) - exact).abs().max())
              for name, sampler in (("euler", Euler(steps=30, grid="logsnr")), ("heun", Heun(steps=30, grid="logsnr")))}
    assert errors["heun"] < errors["euler"] / 3 and errors["heun"] < 0.05, errors


def test_the_prior_end_of_flow_is_safe_for_every_parametrization_it_allows():
    """At t = T flow has a = 0: x0, v and velocity nets are defined there (and train there with finite weights);
    eps and edm, whose x0_hat divides by a, are refused when the process is built."""
    x0, g = gaussian_data()
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.full((6,), 1000)
    for parametrization in ("x0", "v", "velocity"):
        for weight in ("none", "min_snr", "edm"):
            process = Affine(Flow(), T=1000, parametrization=parametrization, loss_weight=weight)
            x_t = process(x0, t, eps)
            torch.testing.assert_close(process.x0_hat(process.target(x0, t, eps), x_t, t), x0)
            assert torch.isfinite(process.loss(torch.zeros_like(x0), x0, x_t, t, eps)), (parametrization, weight)
    for parametrization in ("eps", "edm"):
        with pytest.raises(UdmError, match=f"parametrization='{parametrization}'.*at t = T on the flow schedule.*velocity"):
            Affine(Flow(), T=1000, parametrization=parametrization)
    times = Affine(Flow(), T=1000, parametrization="velocity").sample_t(4096, generator=g)  # continuous schedules train on real-valued times
    assert times.is_floating_point() and float(times.max()) <= 1000 and float(times.min()) > 0
    assert len(set(times.tolist())) == 4096


def test_churn_stays_inside_the_schedule():
    """No churn out of sigma = inf (flow's prior), and sigma_hat is capped at sigma(T), so x and t_hat agree."""
    flow = Affine(Flow(), T=1000, parametrization="x0", scale_input=False)
    g = torch.Generator().manual_seed(0)
    x = Heun(steps=8, churn=10.0, grid="uniform")(flow, exact_denoiser(flow), torch.randn(2000, 2, generator=g, dtype=torch.float64), generator=g)
    assert float(x.std()) == pytest.approx(0.5, abs=0.05)
    edm = Affine(Geometric(0.002, 80.0, 1e-3), T=1000, parametrization="x0", scale_input=False)
    step = HeunStep(churn=40.0).bind(edm, list(range(10)))
    x_T = 80 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    x_hat, t_hat = step.raise_noise(edm, x_T, torch.full((4000,), 1000), g)
    assert float(t_hat.max()) <= 1000 and float(x_hat.std()) == pytest.approx(80.0, rel=0.03)
    x_mid = 5 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    t5 = edm.T * edm.schedule.time_of_sigma(torch.tensor(5.0))
    x_hat, t_hat = step.raise_noise(edm, x_mid, torch.full((4000,), float(t5), dtype=torch.float64), g)
    sigma_hat = float(edm.coefficients(t_hat)[1][0])
    assert sigma_hat == pytest.approx(5 * math.sqrt(2), rel=1e-6)  # gamma = min(40 / 10, sqrt 2 - 1)
    assert float(x_hat.std()) == pytest.approx(sigma_hat, rel=0.03)


def test_continuous_grids_spend_no_steps_above_sigma_80():
    for schedule in (CosineVP(), vp_cosine(1000), Flow()):
        process = Affine(schedule, T=1000, parametrization="x0")
        for grid in (Karras(), LogSNR()):
            ts = grid(process, steps=10)
            a, b = process.coefficients(time_tensor(ts[1:]))
            assert ts[0] == 1000 and float((b / a).max()) <= 80.0 + 1e-6, (schedule.describe(), type(grid).__name__, ts)


def test_knobs_that_a_setting_does_not_read_are_refused():
    with pytest.raises(UdmError, match="density_mean=-1.2 .*time_density=uniform has neither"):
        Affine(Geometric(), time_density="uniform", density_mean=-1.2, density_std=1.2)
    with pytest.raises(UdmError, match="which is off"):
        Heun(churn=0.0, churn_max=1.0)


# covered by default: test_distill_cli::test_a_student_samples_with_its_own_sampler_and_refuses_what_it_did_not_learn (a flow model through udm-train/sample/eval); Heun's NFE in test_heun_counts_two_evaluations_per_step_and_one_into_the_data
@pytest.mark.slow
def test_flow_trains_and_samples_through_the_console_scripts(tmp_path):
    """process=flow end to end on the 8x8 digits, with a step count the checkpoint interval does not divide: the
    checkpoint is the last step's (with both weight sets), and udm-sample's Heun counts its network evaluations."""
    from .conftest import run_cli

    run = tmp_path / "flow"
    run_cli("udm-train", "experiment=digits_smoke", "process=flow", "sampler=euler", "sampler.steps=4",
            "trainer.max_steps=13", "final_samples=0", f"hydra.run.dir={run}", cwd=tmp_path)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 13 and "current_model_state" in ckpt
    proc = run_cli("udm-eval", f"ckpt={run}", "n=8", "sampler=heun", "sampler.steps=4", "sampler.grid=uniform",
                   "metrics=[]", "progress=false", cwd=tmp_path)
    result = json.loads((run / "eval" / "heun-4steps-n8-seed0.json").read_text())
    assert result["nfe_per_sample"] == 2 * 4 - 2, proc.stdout  # out of u = 1 and into the data: Euler steps
