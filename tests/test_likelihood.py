"""Likelihood bounds against references written out from the papers' formulas."""

import math

import mpmath
import numpy as np
import pytest
import torch

from udm.errors import UdmError
from udm.metrics.likelihood import bits_per_dim, token_nelbo, vlb_terms
from udm.processes import Blur, Gaussian, TokenMask, TokenReplace


def pixels(n=4, size=4, seed=0, dtype=torch.float32):
    """Images of 8-bit pixels mapped by x / 127.5 - 1, with the extreme values present."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), generator=g)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    return (x / 127.5 - 1).to(dtype)


class Recorded:
    """A small random network, tanh(W x_t + t u), that remembers every (x_t, out) by t."""

    def __init__(self, dim, T, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W, self.u, self.T = torch.randn(dim, dim, generator=g) / dim**0.5, torch.randn(dim, generator=g), T
        self.calls = {}

    def __call__(self, x_t, t):
        flat = x_t.flatten(1)
        out = torch.tanh(flat @ self.W.to(flat.dtype) + (t[:, None] / self.T) * self.u.to(flat.dtype)).reshape(x_t.shape)
        self.calls[int(t[0])] = (x_t.double(), out.double())
        return out


def reference_bits_per_dim(p, x0, calls, variance, gamma=None):
    """DDPM's bound term by term (Ho et al. 2020, eq. 5-7, 11-13), in numpy, from the recorded calls."""
    x0 = x0.double().numpy()
    ab = p.alphabar.numpy()
    T, D = p.T, x0[0].size

    def kl(mq, vq, mp, vp):
        return (0.5 * (np.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1)).reshape(len(x0), -1).sum(1)

    def x0_of(out, x_t, t):
        a, b = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
        return {"eps": (x_t - b * out) / a, "v": a * x_t - b * out, "x0": out}[p.parametrization]

    total = kl(math.sqrt(ab[T]) * x0, 1 - ab[T], 0.0, 1.0)  # L_T
    for t in range(2, T + 1):
        x_t, out = (c.numpy() for c in calls[t])
        beta, alpha = 1 - ab[t] / ab[t - 1], ab[t] / ab[t - 1]
        mean_q = math.sqrt(ab[t - 1]) * beta / (1 - ab[t]) * x0 + math.sqrt(alpha) * (1 - ab[t - 1]) / (1 - ab[t]) * x_t
        var_q = (1 - ab[t - 1]) / (1 - ab[t]) * beta
        if p.parametrization == "eps":  # DDPM eq. 11
            mean_p = (x_t - beta / math.sqrt(1 - ab[t]) * out) / math.sqrt(alpha)
        else:
            x0_hat = x0_of(out, x_t, t)
            mean_p = math.sqrt(ab[t - 1]) * beta / (1 - ab[t]) * x0_hat + math.sqrt(alpha) * (1 - ab[t - 1]) / (1 - ab[t]) * x_t
        if variance == "beta":
            var_p = beta
        elif variance == "posterior":
            var_p = var_q
        else:  # Analytic-DPM Theorem 1 with lambda^2 = beta~, Var(x0 | x_t) clipped to [0, 1] (Theorem 2)
            x0_var = min(max((1 - ab[t]) / ab[t] * (1 - gamma[t]), 0.0), 1.0)
            var_p = var_q + (math.sqrt((1 - ab[t]) / alpha) - math.sqrt(1 - ab[t - 1] - var_q)) ** 2 * x0_var * ab[t] / (1 - ab[t])
        total += kl(mean_q, var_q, mean_p, var_p)
    x_1, out = (c.numpy() for c in calls[1])
    sigma = math.sqrt((1 - ab[1]) / (1 - ab[2]) * (1 - ab[2] / ab[1]))  # beta~_2
    mean = x0_of(out, x_1, 1)
    mpmath.mp.dps = 50

    def log_bin(x, mu):
        lo = -mpmath.inf if x < -0.999 else mpmath.mpf(x) - mpmath.mpf(1) / 255
        hi = mpmath.inf if x > 0.999 else mpmath.mpf(x) + mpmath.mpf(1) / 255
        if mu > x:  # the bin lies below the mean: the lower tail's masses are small, no cancellation
            return float(mpmath.log(mpmath.ncdf(hi, mu, sigma) - mpmath.ncdf(lo, mu, sigma)))
        return float(mpmath.log(mpmath.ncdf(-lo, -mu, sigma) - mpmath.ncdf(-hi, -mu, sigma)))

    decoder = np.array([[-log_bin(x, mu) for x, mu in zip(xs.ravel(), ms.ravel())] for xs, ms in zip(x0, mean)])
    total += decoder.sum(1)
    return total / (D * math.log(2))


@pytest.mark.parametrize("schedule,parametrization,variance", [
    ("linear", "eps", "beta"), ("linear", "eps", "posterior"), ("cosine", "v", "beta"),
    ("linear", "x0", "posterior"), ("cosine", "eps", "analytic"), ("linear", "v", "analytic"),
])
def test_bound_matches_the_term_by_term_reference(schedule, parametrization, variance):
    p = Gaussian(T=20, schedule=schedule, parametrization=parametrization)  # clip_denoised=True: the bound ignores it
    x0 = pixels()
    gamma = None
    if variance == "analytic":
        t = torch.arange(21)
        gamma = torch.where(t % 2 == 0, 0.05, 1.2).double()  # Var(x0 | x_t) < 0 at odd t, > 1 at some even t (cosine)
    model = Recorded(16, p.T)
    got = bits_per_dim(p, model, x0, generator=torch.Generator().manual_seed(0), variance=variance, gamma=gamma)
    expected = reference_bits_per_dim(p, x0, model.calls, variance, None if gamma is None else gamma.numpy())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)
    assert len(model.calls) == p.T  # one network call per t


def test_analytic_variance_needs_the_moments_passed_in():
    with pytest.raises(UdmError, match="variance='analytic' needs the model's eps moments.*pass gamma="):
        bits_per_dim(Gaussian(T=20), zero_eps, pixels(), generator=torch.Generator().manual_seed(0), variance="analytic")


def test_terms_are_ordered_as_ddpm_writes_them():
    p = Gaussian(T=20)
    terms = vlb_terms(p, lambda x, t: torch.zeros_like(x), pixels(), generator=torch.Generator().manual_seed(0))
    assert terms.shape == (4, 21) and (terms >= 0).all()
    ab_T = p.alphabar[20]
    x0 = pixels().double()
    prior = 0.5 * (ab_T * x0**2 + (1 - ab_T) - 1 - torch.log(1 - ab_T)).flatten(1).sum(1)
    torch.testing.assert_close(terms[:, 20], prior, rtol=1e-12, atol=0)  # column T is L_T


def zero_eps(x_t, t):
    return torch.zeros_like(x_t)


def oracle(x0_point, p):
    """The exact eps given x_t when the data are the single point x0_point."""

    def model(x_t, t):
        a, b = p.a[t].view(-1, 1, 1, 1), p.b[t].view(-1, 1, 1, 1)
        return (x_t - a * x0_point) / b

    return model


def test_predicting_eps_zero_is_worse_than_uniform():
    p = Gaussian(T=1000, schedule="linear")
    bpd = bits_per_dim(p, zero_eps, pixels(n=4, size=8), generator=torch.Generator().manual_seed(0))
    assert (bpd > 8).all()  # uniform over 256 levels costs 8 bits/dim


def test_an_oracle_for_one_point_reaches_the_closed_form():
    p = Gaussian(T=1000, schedule="linear")
    x0 = pixels(n=1, size=8, dtype=torch.float64).expand(3, -1, -1, -1)

    def g():
        return torch.Generator().manual_seed(0)

    exact, worst = oracle(x0, p), bits_per_dim(p, zero_eps, x0, generator=g())
    posterior = bits_per_dim(p, exact, x0, generator=g(), variance="posterior")
    # x0_hat = x0 at every t: only L_T and the decoder's bin mass at its own centre remain
    ab_T, sigma, half = p.alphabar[1000], p.b[1] / p.b[2] * (1 - p.alphabar[2] / p.alphabar[1]).sqrt(), 1 / 255
    prior = 0.5 * (ab_T * x0**2 + (1 - ab_T) - 1 - torch.log(1 - ab_T))
    inner = -torch.log(torch.erf(half / sigma / math.sqrt(2)))
    edge = -torch.log(torch.special.ndtr(half / sigma))
    decoder = torch.where(x0.abs() > 0.999, edge, inner)
    closed = (prior + decoder).flatten(1).sum(1) / (64 * math.log(2))
    torch.testing.assert_close(posterior, closed, rtol=1e-9, atol=0)
    beta = bits_per_dim(p, exact, x0, generator=g())
    assert (beta > posterior).all() and (beta < 3).all() and (worst - beta > 10).all()
    # a point mass has Gamma_t = 1: Analytic-DPM's variance is then the posterior's exactly
    ones = torch.ones(1001, dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(p, exact, x0, generator=g(), variance="analytic", gamma=ones), posterior, rtol=1e-12, atol=0)


def test_levels_follow_the_data_grid():
    p = Gaussian(T=10)
    digits = torch.randint(0, 17, (2, 1, 4, 4)) / 8.0 - 1  # scikit-learn's digits: 17 levels
    with pytest.raises(UdmError, match="levels=256"):
        bits_per_dim(p, zero_eps, digits)
    assert torch.isfinite(bits_per_dim(p, zero_eps, digits, levels=17)).all()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        bits_per_dim(p, zero_eps, digits * 2)
    with pytest.raises(UdmError, match="Gaussian"):
        bits_per_dim(Blur(T=10), zero_eps, pixels())


# --- tokens ---------------------------------------------------------------------------------

L, V, SPECIAL, MASK = 12, 40, [0, 1], 2
REGULAR = V - 3


def tokens(n=8, seed=0):
    return torch.randint(3, V, (n, L), generator=torch.Generator().manual_seed(seed))


SCHEDULES = [("count", None), ("linear", 30), ("cosine", 50)]


@pytest.mark.parametrize("schedule,T", SCHEDULES)
def test_token_nelbo_of_an_oracle_is_zero_and_of_a_uniform_guess_log_v(schedule, T):
    p = TokenMask(length=L, vocab_size=V, special_ids=SPECIAL, mask_id=MASK, schedule=schedule, T=T)
    x0 = tokens()
    perfect = token_nelbo(p, lambda x_t, t: torch.nn.functional.one_hot(x0, V).float() * 1e4, x0)
    assert perfect.abs().max() < 1e-9
    # uniform over the regular tokens: sum_t (k_t - k_{t-1}) / k_t * k_t * log n = L log n, whatever x_t is
    uniform = token_nelbo(p, lambda x_t, t: torch.zeros(*x_t.shape, V), x0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(uniform, torch.full((8,), math.log(REGULAR), dtype=torch.float64), rtol=1e-12, atol=0)


def test_token_nelbo_of_a_context_free_model_is_its_exact_nll():
    """A model that ignores x_t, p(x0_i) per position, has the bound sum_t n_t / k_t * E[sum over masked]
    = sum_t n_t / k_t * k_t / L * sum_i -log p(x0_i) = mean_i -log p(x0_i) per token (in expectation)."""
    p = TokenMask(length=L, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
    logits = torch.randn(L, V, generator=torch.Generator().manual_seed(1)) * 2
    x0 = tokens(n=1).expand(4000, -1)
    estimate = token_nelbo(p, lambda x_t, t: logits.expand(len(x_t), -1, -1), x0, generator=torch.Generator().manual_seed(0))
    nll = -p.logits(logits).double().log_softmax(-1).gather(-1, x0[:1].T).squeeze(-1)
    assert estimate.mean().item() == pytest.approx(nll.mean().item(), abs=4 * estimate.std().item() / 4000**0.5)


def test_token_nelbo_refuses_the_replacement_process_and_special_tokens():
    replace = TokenReplace(length=L, vocab_size=V, special_ids=[*SPECIAL, MASK])
    with pytest.raises(UdmError, match=r"\[MASK\] \(absorbing\) processes only"):
        token_nelbo(replace, lambda x_t, t: torch.zeros(*x_t.shape, V), tokens())
    p = TokenMask(length=L, vocab_size=V, special_ids=SPECIAL, mask_id=MASK)
    x0 = tokens()
    x0[0, 0] = 0
    with pytest.raises(UdmError, match="special tokens"):
        token_nelbo(p, lambda x_t, t: torch.zeros(*x_t.shape, V), x0)
