"""Analytic-DPM: the moments Gamma_t, the optimal variance against the paper's theorems, the
cache beside the checkpoint, and udm-sample sampler=analytic_ddim end to end."""

import math
from pathlib import Path

import pytest
import torch

from udm.analytic import analytic_variance, cached_eps_moments, eps_moments, moments_path
from udm.errors import UdmError
from udm.processes import Gaussian
from udm.samplers import AnalyticDPM, AnalyticStep, Mixed

from .conftest import run_cli

PAIRS = [(1, 0), (2, 1), (20, 19), (50, 49), (50, 30), (37, 5), (10, 2)]


def point_mass(n=64, seed=0):
    """Training data that are one image repeated: q(x0) is a point mass."""
    x0 = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1
    return x0.expand(n, -1, -1, -1)


class ExactEps:
    """The true eps given x_t for point-mass data, eps = (x_t - a_t x0) / b_t; it keeps what it returned."""

    def __init__(self, p, x0):
        self.p, self.x0, self.seen, self.calls = p, x0[:1], [], 0

    def __call__(self, x_t, t):
        self.calls += 1
        a, b = self.p.a[t].view(-1, 1, 1, 1), self.p.b[t].view(-1, 1, 1, 1)
        eps = (x_t - a * self.x0) / b
        self.seen.append((t, eps))
        return eps


def step_coefficients(rule, p, t_int, s_int, shape=(2, 1, 4, 4), seed=11):
    """(b_s r_eps, b_s r_z) of a step rule's x_s = a_s x0_hat + b_s (r_eps eps_hat + r_z z), read off per element.

    With x0_hat = 0 and x_t = b_t e (so eps_hat = e) the step is b_s (r_eps e + r_z z); the rule draws z from
    the generator, so two runs from the same seed, at e = 0 and at the given e, separate the two terms.
    """
    t, s = torch.full((shape[0],), t_int), torch.full((shape[0],), s_int)
    x0_hat = torch.zeros(shape, dtype=torch.float64)
    e = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) + 0.5
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)  # what the rule draws
    noise_only = rule(p, p.b[t_int] * 0 * e, x0_hat, t, s, torch.Generator().manual_seed(seed))
    both = rule(p, p.b[t_int] * e, x0_hat, t, s, torch.Generator().manual_seed(seed))
    return (both - noise_only) / e, noise_only / z


def test_point_mass_moments_are_the_mean_square_of_the_true_eps_and_give_ddims_variance():
    p = Gaussian(T=50, schedule="cosine")
    data = point_mass()
    model = ExactEps(p, data)
    M = 40
    gamma = eps_moments(p, model, data, num_samples=M, batch_size=64, generator=torch.Generator().manual_seed(0))
    # Gamma_t = 1/M sum_m ||eps_{t,m}||^2 / d over exactly M draws per t
    t = torch.cat([t for t, _ in model.seen])
    sq = torch.cat([eps.flatten(1).pow(2).mean(1) for _, eps in model.seen])
    assert torch.equal(torch.bincount(t, minlength=51)[1:], torch.full((50,), M))
    expected = torch.zeros(51, dtype=torch.float64).index_add_(0, t, sq) / M
    torch.testing.assert_close(gamma[1:], expected[1:], rtol=1e-12, atol=0)
    assert gamma[0] == 1 and (gamma[1:] - 1).abs().max() < 6 * math.sqrt(2 / (16 * M))  # E ||eps||^2 / d = 1
    # the closed form of a point mass: Gamma_t = 1, Var(x0 | x_t) = 0, so the optimal variance is the
    # lower bound lambda^2 = eta^2 * posterior variance: Analytic-DPM's step is the DDIM step, exactly
    ones = torch.ones(51, dtype=torch.float64)
    for t_int, s_int in PAIRS:
        t, s = torch.tensor([t_int]), torch.tensor([s_int])
        for eta in (0.0, 0.5, 1.0):
            lam2, sigma2 = analytic_variance(p, ones, t, s, eta)
            torch.testing.assert_close(sigma2, lam2, rtol=0, atol=1e-12)
            analytic, ddim = AnalyticStep(ones, eta, clip_pixels=0), Mixed(eta, "posterior")
            if s_int > 0:  # (r_eps, r_z) of both steps: read off b_s r, then divided by b_s
                b_s = p.b[s_int].item()
                for got, want in zip(step_coefficients(analytic, p, t_int, s_int), step_coefficients(ddim, p, t_int, s_int)):
                    torch.testing.assert_close(got / b_s, want / b_s, rtol=0, atol=1e-12)
            else:  # both return x0_hat
                x0_hat = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
                x_t = p(x0_hat, torch.full((2,), t_int), torch.randn_like(x0_hat))
                tt, ss = torch.full((2,), t_int), torch.full((2,), s_int)
                for rule in (analytic, ddim):
                    assert torch.equal(rule(p, x_t, x0_hat, tt, ss, torch.Generator().manual_seed(0)), x0_hat)


def theorem_1(p, t, s, eta, gamma_t):
    """sigma*^2 = lambda^2 + (sqrt(b_t^2 / alpha_{t|s}) - sqrt(b_s^2 - lambda^2))^2 (1 - Gamma_t) (Bao et al. 2022)."""
    ab_t, ab_s = p.alphabar[t].item(), p.alphabar[s].item()
    lam2 = eta**2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    gap2 = (math.sqrt((1 - ab_t) / (ab_t / ab_s)) - math.sqrt(1 - ab_s - lam2)) ** 2
    bounded = lam2 + (math.sqrt(ab_s) - math.sqrt(1 - ab_s - lam2) * math.sqrt(ab_t / (1 - ab_t))) ** 2  # data in [-1, 1]
    return lam2, lam2 + gap2 * (1 - gamma_t), bounded


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_analytic_variance_is_theorem_1_within_theorem_2s_bounds(schedule):
    p = Gaussian(T=50, schedule=schedule)
    gamma = torch.rand(51, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.2
    for t_int, s_int in PAIRS:
        for eta in (0.0, 1.0):
            lam2, sigma2, upper = theorem_1(p, t_int, s_int, eta, gamma[t_int].item())
            got = analytic_variance(p, gamma, torch.tensor([t_int]), torch.tensor([s_int]), eta)[1].item()
            assert got == pytest.approx(min(max(sigma2, lam2), upper), rel=1e-10, abs=1e-15)
            rule = AnalyticStep(gamma, eta, clip_pixels=0)
            if s_int > 0:  # x_s = a_s x0_hat + sqrt(b_s^2 - lambda^2) eps_hat + sigma z
                b_s = p.b[s_int].item()
                eps_coef, z_coef = step_coefficients(rule, p, t_int, s_int)
                for c in z_coef.flatten().tolist():
                    assert c**2 == pytest.approx(got, rel=1e-10, abs=1e-15)
                for c in eps_coef.flatten().tolist():
                    assert c**2 == pytest.approx(b_s**2 - lam2, rel=1e-10)
            else:  # the last step returns x0_hat
                x0_hat = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
                t, s = torch.full((2,), t_int), torch.full((2,), s_int)
                x_t = p(x0_hat, t, torch.randn_like(x0_hat))
                assert torch.equal(rule(p, x_t, x0_hat, t, s, torch.Generator().manual_seed(0)), x0_hat)


def test_the_last_noisy_step_is_clipped_to_two_pixel_levels():
    p = Gaussian(T=50)
    gamma = torch.zeros(51, dtype=torch.float64)  # Gamma = 0: the largest variance, Var(x0 | x_t) = min(b^2 / a^2, 1)
    sampler = AnalyticDPM(steps=5, eta=0.0, gamma=gamma)  # clip_pixels=2 by default
    steps = []
    x_T = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sampler(p, lambda x_t, t: torch.zeros_like(x_t), x_T, generator=torch.Generator().manual_seed(0), callback=steps.append)
    cap = 2 * 2 / 255 * math.sqrt(math.pi / 2)  # E|sigma z| = sigma sqrt(2 / pi) <= 2 levels of 2/255
    ts = sampler.timesteps(p)
    assert ts == [50, 40, 30, 20, 10] and len(steps) == 5
    bound = sampler.step.bind(p, ts)  # the rule of one run: it clips the step into the last noisy time ts[-1]
    assert bound.last_noisy == 10 and bound.clip_pixels == 2.0
    assert sampler.step.last_noisy is None  # the clip lasts one sampling run: the sampler's own rule has none
    # every step of the run was the bound rule's (replayed from the same seed: only the steps draw noise)
    replay = torch.Generator().manual_seed(0)
    for step in steps:
        t, s = torch.full((2,), step.t), torch.full((2,), step.s)
        assert torch.equal(bound(p, step.x_t, step.x0_hat, t, s, replay), step.x_s)

    def sigma(rule, t, s):
        return step_coefficients(rule, p, t, s)[1].abs().flatten().tolist()  # b_s r_z = sigma, per element

    assert all(v > cap for v in sigma(sampler.step, 20, 10) + sigma(sampler.step, 30, 20))
    # steps 50 > 40 > 30 > 20 > 10 > 0: only 20 -> 10 is clipped
    assert all(v == pytest.approx(cap, rel=1e-12) for v in sigma(bound, 20, 10))
    assert all(v > cap for v in sigma(bound, 30, 20))


def test_variance_analytic_without_moments_says_how_to_get_them():
    p = Gaussian(T=10)
    with pytest.raises(UdmError, match=r"needs the eps moments.*udm-sample.*estimate them.*sampler.prepare\(process, net, model\)"):
        AnalyticDPM(steps=2)(p, lambda x, t: x, torch.randn(1, 1, 2, 2))
    with pytest.raises(UdmError, match=r"prepare it with the opened checkpoint \(udm.models.open_model\), or pass gamma="):
        AnalyticDPM(steps=2).prepare(p, lambda x, t: x)


def test_moments_are_cached_beside_the_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    p = Gaussian(T=20)
    data = point_mass()
    loads = []

    def load():
        loads.append(1)
        return data

    model = ExactEps(p, data)
    first = cached_eps_moments(p, model, ckpt, load, num_samples=8, batch_size=32, seed=3)
    calls = model.calls
    assert calls == 5 and moments_path(ckpt, 8, 32, 3).is_file()  # 20 steps x 8 samples in batches of 32
    again = cached_eps_moments(p, model, ckpt, load, num_samples=8, batch_size=32, seed=3)
    assert model.calls == calls and len(loads) == 1  # neither the net nor the data were touched
    assert torch.equal(first, again)
    other_seed = cached_eps_moments(p, model, ckpt, load, num_samples=8, batch_size=32, seed=4)
    assert model.calls == 2 * calls and not torch.equal(first, other_seed)
    ckpt.write_bytes(b"retrained weights")  # a new checkpoint is a new model
    cached_eps_moments(p, model, ckpt, load, num_samples=8, batch_size=32, seed=3)
    assert model.calls == 3 * calls and len(list(ckpt.parent.glob("analytic-*.pt"))) == 3


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny nets: threads only contend on a shared machine


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# covered by default: test_moments_are_cached_beside_the_checkpoint (estimated once, then read), test_contract (analytic_ddim prepared on a model), test_cli's udm-sample
@pytest.mark.slow
def test_udm_sample_with_analytic_ddim_estimates_then_reads_the_moments(tmp_path, one_thread, capsys):
    from hydra import compose, initialize_config_dir

    from udm.cli import CONF_DIR
    from udm.jobs.sample import sample_images

    run = tmp_path / "run"
    run_cli("udm-train", "experiment=digits_smoke", "process.T=50", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "val_samples=0", "final_samples=2", f"hydra.run.dir={run}", cwd=tmp_path, env=ONE_THREAD)
    args = [f"ckpt={run}", "sampler=analytic_ddim", "sampler.steps=5", "sampler.moments.num_samples=4", "n=3", "progress=false"]
    first = run_cli("udm-sample", *args, cwd=tmp_path, env=ONE_THREAD)
    assert "eps moments estimated on 4 training samples x 50 steps" in first.stdout
    caches = list((run / "checkpoints").glob("analytic-*.pt"))
    assert len(caches) == 1 and torch.load(caches[0], weights_only=True)["gamma"].shape == (51,)
    samples = torch.load(Path(first.stdout.split("written to ")[-1].strip()), weights_only=True)
    assert samples.shape == (3, 1, 8, 8) and torch.isfinite(samples).all()
    # the same command again (in this process, to save a start-up) reads the cache
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="sample", overrides=[*args, "sampler_name=analytic_ddim"])
    second = sample_images(cfg)
    assert f"eps moments read from {caches[0]}" in capsys.readouterr().out
    assert torch.equal(torch.load(second["tensor"], weights_only=True), samples)
