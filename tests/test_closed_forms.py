"""Closed forms the code must reproduce: the VE posterior step and FID between two Gaussians.

The VE reverse step is written out here from the process's own pieces, x_s = F_s(x0_hat, r_eps eps_hat + r_z z)
with eps_hat = F_t^{-1}(x0_hat, x_t) and (r_eps, r_z) = noise_ratio(t, s, eta), and compared in float64 with
the Gaussian posterior q(x_s | x_t, x0) of x_t = x0 + sigma_t eps (eta = 1) and with the deterministic DDIM
step (eta = 0). FID, with an identity feature map on Gaussian samples, must be the Frechet distance
||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from udm.metrics.fid import frechet_distance
from udm.processes import VarianceExploding
from udm.samplers import Mixed

T, SIGMA_MIN, SIGMA_MAX = 100, 0.01, 10.0
# (t, s): one step, skipped steps (s < t - 1) from the top, the middle and the bottom, and the last step to s = 0
PAIRS = [(100, 99), (100, 50), (100, 0), (37, 36), (37, 3), (10, 1), (5, 0), (1, 0)]


def sigma(t: int) -> float:
    """The schedule written out: sigma_0 = 0, then geometric from sigma_min (t = 1) to sigma_max (t = T)."""
    return 0.0 if t == 0 else SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** ((t - 1) / (T - 1))


def column(values, x: torch.Tensor) -> torch.Tensor:
    """Per-sample numbers [B] as a float64 column broadcasting against x [B, D]."""
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1, *([1] * (x.dim() - 1)))


def ve_step(process, x0_hat, x_t, t, s, eta, z):
    """The mixed reverse step x_s = F_s(x0_hat, r_eps eps_hat + r_z z), from the process's own pieces."""
    eps_hat = process.inverse(x0_hat, x_t, t)
    r_eps, r_z = process.noise_ratio(t, s, eta)
    return process(x0_hat, s, column(r_eps, x_t) * eps_hat + column(r_z, x_t) * z)


@pytest.fixture
def ve_batch():
    """One row per (t, s) pair: an arbitrary x0_hat and x_t (the posterior formulas hold for any pair)."""
    process = VarianceExploding(T=T, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([p[0] for p in PAIRS])
    s = torch.tensor([p[1] for p in PAIRS])
    x0 = torch.rand(len(PAIRS), 5, generator=g, dtype=torch.float64) * 2 - 1
    x_t = x0 + column([sigma(int(i)) for i in t], x0) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    sig_t, sig_s = (column([sigma(int(i)) for i in u], x0) for u in (t, s))
    return process, t, s, x0, x_t, sig_t, sig_s, g


def test_ve_schedule_is_the_geometric_one():
    process = VarianceExploding(T=T, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    assert process.sigma.dtype == torch.float64
    torch.testing.assert_close(process.sigma, torch.tensor([sigma(t) for t in range(T + 1)], dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_ve_ancestral_step_is_the_posterior(ve_batch):
    """eta = 1: x_s = posterior mean + posterior std * z, for every z, each (t, s) in its own row."""
    process, t, s, x0, x_t, sig_t, sig_s, g = ve_batch
    mean = x0 + sig_s**2 / sig_t**2 * (x_t - x0)
    std = sig_s * (sig_t**2 - sig_s**2).sqrt() / sig_t
    zero = torch.zeros_like(x0)
    step_mean = ve_step(process, x0, x_t, t, s, 1.0, zero)
    torch.testing.assert_close(step_mean, mean, rtol=1e-12, atol=1e-12)
    # the step is affine in z: its coefficient is the posterior std, the same in every coordinate
    coef = ve_step(process, x0, x_t, t, s, 1.0, torch.ones_like(x0)) - step_mean
    torch.testing.assert_close(coef, std.expand_as(x0), rtol=1e-10, atol=1e-12)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ve_step(process, x0, x_t, t, s, 1.0, z), mean + std * z, rtol=1e-10, atol=1e-12)
    last = s == 0  # sigma_0 = 0: the last step lands on x0_hat exactly, whatever z is
    assert last.sum() == 3 and torch.equal(ve_step(process, x0, x_t, t, s, 1.0, z)[last], x0[last])
    assert (std[~last] > 0).all()  # the other rows do test a noise coefficient


def test_ve_deterministic_step_rescales_the_noise(ve_batch):
    """eta = 0: x_s = x0 + sigma_s / sigma_t (x_t - x0), whatever z is (DDIM for VE)."""
    process, t, s, x0, x_t, sig_t, sig_s, g = ve_batch
    expected = x0 + sig_s / sig_t * (x_t - x0)
    for z in (torch.zeros_like(x0), torch.randn(x0.shape, generator=g, dtype=torch.float64) * 3):
        torch.testing.assert_close(ve_step(process, x0, x_t, t, s, 0.0, z), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_the_samplers_mixed_step_is_the_step_written_out(ve_batch, eta):
    """udm.samplers.Mixed, run with a seeded generator, is ve_step with the z that generator draws: the closed
    forms above hold for the step the samplers take, not only for the pieces."""
    process, t, s, x0, x_t, *_ = ve_batch
    x_s = Mixed(eta)(process, x_t, x0, t, s, torch.Generator().manual_seed(5))
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(x_s, ve_step(process, x0, x_t, t, s, eta, z), rtol=0, atol=1e-15)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ve_step_keeps_the_marginal_for_any_eta(ve_batch, eta):
    """r_eps^2 + r_z^2 = 1 (x_s ~ N(x0, sigma_s^2) whenever x_t ~ N(x0, sigma_t^2))
    and r_z = eta sqrt(1 - sigma_s^2 / sigma_t^2)."""
    process, t, s, _, _, sig_t, sig_s, _ = ve_batch
    r_eps, r_z = process.noise_ratio(t, s, eta)
    live = s > 0
    ones = torch.ones(int(live.sum()), dtype=torch.float64)
    torch.testing.assert_close((r_eps**2 + r_z**2)[live], ones, rtol=1e-12, atol=1e-12)
    expected = eta * (1 - sig_s.flatten() ** 2 / sig_t.flatten() ** 2).sqrt()
    torch.testing.assert_close(r_z[live].double(), expected[live], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t,s", [(100, 99), (100, 50), (37, 3), (10, 1)])
def test_ve_ancestral_step_samples_the_posterior(t, s):
    """Many z through the step: the sample mean and variance of x_s are the posterior's (loose, by sample size).

    N = 200,000 draws: the mean's standard error is std / 447 and the variance's relative standard error
    sqrt(2 / N) = 0.32%, so 5 standard errors (0.011 std, 1.6%) cannot be missed by chance but do catch
    a z scaled by sigma_t instead of sigma_s, a missing square root or a dropped z."""
    n = 200_000
    process = VarianceExploding(T=T, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((n, 1), 0.3, dtype=torch.float64)
    x_t = x0 + sigma(t) * 0.8  # some x_t at noise level t
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_s = ve_step(process, x0, x_t, torch.full((n,), t), torch.full((n,), s), 1.0, z)
    mean = 0.3 + sigma(s) ** 2 / sigma(t) ** 2 * (x_t[0, 0].item() - 0.3)
    var = sigma(s) ** 2 * (sigma(t) ** 2 - sigma(s) ** 2) / sigma(t) ** 2
    std = math.sqrt(var)
    assert abs(x_s.mean().item() - mean) < 5 * std / math.sqrt(n), (x_s.mean().item(), mean)
    assert abs(x_s.var().item() / var - 1) < 5 * math.sqrt(2 / n), (x_s.var().item(), var)


class IdentityFeatures(nn.Module):
    """A 'classifier' whose feature layer is the identity: FID on it is FID on the pixels themselves."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.anchor = nn.Parameter(torch.zeros(()))  # frechet_distance reads the device off a parameter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double()


def frechet(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), with scipy's matrix square roots."""
    root1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root1 @ s2 @ root1).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * cross))


def rotated(stds, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(stds), len(stds))))
    return q @ np.diag(np.square(stds)) @ q.T


def test_fid_on_identity_features_is_the_frechet_distance_of_gaussians():
    """Two samples of N = 50,000 from N(mu1, S1) and N(mu2, S2) in 4 dimensions, as [N, 1, 2, 2] images.

    The images are rounded to 8-bit levels first (step 2/255), which adds (2/255)^2/12 to each variance.
    1. Exact: FID equals the formula on the moments of the rounded samples (float64 throughout).
    2. Closed form: FID approaches the formula on the true parameters. Its sampling error is dominated by
       2 (mu1 - mu2) . (mean errors), sd 2 sqrt(dmu^T (S1 + S2) dmu / N) = 1.0e-4 here (simulated spread
       of the whole estimate: 1.1e-4; the covariance term's errors are of relative size sqrt(2/N) = 0.6%
       of its 0.0085), so the tolerance is 6e-4: a missing factor 2 (+0.028), a missing matrix square root
       (+0.056) or a dropped cross term are far outside it.
    """
    n, stds1, stds2 = 50_000, [0.15, 0.1, 0.06, 0.03], [0.12, 0.09, 0.07, 0.02]
    mu1 = np.array([0.1, -0.1, 0.05, 0.0])
    mu2 = mu1 + np.array([0.06, -0.04, 0.0, 0.03])
    s1, s2 = rotated(stds1, 1), rotated(stds2, 2)
    g = torch.Generator().manual_seed(0)

    def draw(mu, cov):
        chol = torch.from_numpy(np.linalg.cholesky(cov))
        x = torch.from_numpy(mu) + torch.randn(n, 4, generator=g, dtype=torch.float64) @ chol.T
        return x.float().view(n, 1, 2, 2)

    real, fake = draw(mu1, s1), draw(mu2, s2)
    assert real.abs().max() < 0.95 and fake.abs().max() < 0.95  # nothing is clipped by the rounding to [-1, 1]
    fid = frechet_distance(real, fake, IdentityFeatures(4), batch_size=10_000)

    def rounded_moments(x):  # the 8-bit levels, computed the way the metric's docs describe (float32 rounding)
        levels = (((x.float() + 1) * 127.5).round() / 127.5 - 1).double().flatten(1).numpy()
        return levels.mean(0), np.cov(levels.T)

    (m1, c1), (m2, c2) = rounded_moments(real), rounded_moments(fake)
    assert fid == pytest.approx(frechet(m1, c1, m2, c2), rel=1e-8, abs=1e-12)

    q = (2 / 255) ** 2 / 12 * np.eye(4)  # the rounding's variance, uniform on one level
    true = frechet(mu1, s1 + q, mu2, s2 + q)
    tol = 6e-4
    assert abs(fid - true) < tol, (fid, true)  # the usual slips (a missing 2 or square root) move it far outside
