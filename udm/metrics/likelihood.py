"""Likelihood bounds: bits/dim of Gaussian diffusion (DDPM's variational bound) and the
per-token negative ELBO of absorbing ([MASK]) token diffusion.

Gaussian (Ho et al. 2020, sec. 3.3; seed 002), in DDPM's notation L = L_T + sum_{t=2..T} L_{t-1} + L_0:

    L_T     = KL(q(x_T | x0) || N(0, I)),                 q(x_T | x0) = N(a_T x0, b_T^2 I)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),
              q(x_{t-1} | x_t, x0) = N(mu~_t(x_t, x0), beta~_t I),
              mu~_t(x_t, x0) = a_{t-1} beta_t / b_t^2 x0 + sqrt(alpha_t) b_{t-1}^2 / b_t^2 x_t,
              beta~_t = b_{t-1}^2 / b_t^2 beta_t,
              p(x_{t-1} | x_t) = N(mu~_t(x_t, x0_hat), sigma_t^2 I)
    L_0     = -log p(x0 | x_1), p(x0 | x_1) the discretized Gaussian N(x0_hat, sigma_1^2) over the
              data's bins (width 2 / (levels - 1); the extreme bins reach out to -inf and +inf).

Each expectation over x_t ~ q(x_t | x0) is one draw per t and sample; the sum over t is
exact (one network call per t). bits/dim = L / (D ln 2), D the numbers per sample.
"""

from __future__ import annotations

import copy
import math

import torch
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.processes import Gaussian, TokenMask
from udm.processes.base import Model

BOUND_VARIANCES = ("beta", "posterior", "analytic")


def gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) per coordinate, in nats."""
    return 0.5 * (torch.log(var_p / var_q) + (var_q + (mean_q - mean_p) ** 2) / var_p - 1)


def log_bin_probability(x0: Tensor, mean: Tensor, std: Tensor, levels: int = 256) -> Tensor:
    """log P(x0's bin) under N(mean, std^2): bins of width 2 / (levels - 1) centred on the data
    grid in [-1, 1], the lowest reaching down to -inf and the highest up to +inf.

    log(Phi(hi) - Phi(lo)) is taken on the side of the mean's tail where it does not cancel:
    with both ends above the mean, Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi).
    """
    half = 1.0 / (levels - 1)
    lo, hi = (x0 - half - mean) / std, (x0 + half - mean) / std
    upper_tail = lo + hi > 0
    lo, hi = torch.where(upper_tail, -hi, lo), torch.where(upper_tail, -lo, hi)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    middle = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    lowest = torch.special.log_ndtr((x0 + half - mean) / std)  # (-inf, x0 + half]
    highest = torch.special.log_ndtr((mean - x0 + half) / std)  # [x0 - half, +inf)
    return torch.where(x0 < -1 + half, lowest, torch.where(x0 > 1 - half, highest, middle))


def check_images(x0: Tensor, levels: int) -> None:
    if not x0.is_floating_point() or x0.dim() < 2:
        raise ValueError(f"bits_per_dim expects data x0 [B, ...] of floats in [-1, 1], got {x0.dtype} {list(x0.shape)}")
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    if x0.min() < -1 - 1e-6 or x0.max() > 1 + 1e-6:
        raise ValueError(f"bits_per_dim needs data in [-1, 1]; got [{x0.min():.3g}, {x0.max():.3g}]")
    grid = (x0.double() + 1) * (levels - 1) / 2
    if (grid - grid.round()).abs().max() > 1e-3:
        raise UdmError(
            f"the data are not on a grid of {levels} levels in [-1, 1] (x0 = k / {(levels - 1) / 2} - 1); "
            f"pass the data's number of levels (levels=256 for uint8 pixels, 17 for scikit-learn's digits)"
        )


def is_plain_gaussian(process) -> bool:
    """A process that declares DDPM's bound in bits/dim (a VP Gaussian of the data, not of a learned code)."""
    return process.capabilities.likelihood == "bits/dim"


def unclipped(process: Gaussian, clip: bool) -> Gaussian:
    """A view of the process whose x0_hat clips to [-1, 1] only when `clip` (buffers shared)."""
    view = copy.copy(process)
    view.clip_denoised = clip
    return view


def bound_variance(process: Gaussian, t: int, variance: str, gamma: Tensor | None = None) -> Tensor:
    """sigma_t^2 of p(x_{t-1} | x_t) for t >= 2, a float64 scalar; 'analytic' needs the model's Gamma_0..T."""
    beta = 1 - process.alphabar[t] / process.alphabar[t - 1]
    if variance == "beta":
        return beta.double()
    if variance == "posterior":
        return (process.b[t - 1] ** 2 / process.b[t] ** 2 * beta).double()
    from udm.analytic import analytic_variance

    if gamma is None:
        raise UdmError("variance='analytic' needs the model's eps moments Gamma_t (udm.analytic.eps_moments); pass gamma=...")
    t_, s_ = (torch.tensor([i], device=process.alphabar.device) for i in (t, t - 1))
    return analytic_variance(process, gamma.to(process.alphabar.device), t_, s_, eta=1.0)[1][0].double()


def decoder_variance(process: Gaussian) -> Tensor:
    """sigma_1^2 of the discretized decoder: beta~_2, as DDPM's and Analytic-DPM's code use for every
    variance choice (beta~_1 = 0 is degenerate); beta_1 when T = 1."""
    if process.T == 1:
        return (1 - process.alphabar[1]).double()
    beta2 = 1 - process.alphabar[2] / process.alphabar[1]
    return (process.b[1] ** 2 / process.b[2] ** 2 * beta2).double()


@torch.no_grad()
def vlb_terms(
    process: Gaussian,
    model: Model,
    x0: Tensor,
    variance: str = "beta",
    levels: int = 256,
    clip_denoised: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
    gamma: Tensor | None = None,
) -> Tensor:
    """The terms L_0 .. L_T of DDPM's bound in nats, [B, T + 1] float64: column i holds L_i.

    `model(x_t, t)` gives the raw net output, turned into x0_hat by the process's parametrization.
    x0_hat is NOT clipped to [-1, 1] by default (clip_denoised=False, whatever the process says):
    the reverse mean is then DDPM's eq. 11, mu_theta = (x_t - beta_t / b_t eps_theta) / sqrt(alpha_t),
    the model its bound is written for. clip_denoised=True bounds the model of the clipping
    sampler instead (as Analytic-DPM's code evaluates it); both are valid bounds, of different models.
    `variance` picks sigma_t^2 for t >= 2: 'beta' (beta_t, DDPM's choice for its reported NLL,
    the default), 'posterior' (beta~_t) or 'analytic' (Analytic-DDPM's optimal variance with
    lambda^2 = beta~_t; needs the model's Gamma_0..T as `gamma`). sigma_1^2 of the decoder is beta~_2 for all.
    """
    if not is_plain_gaussian(process):
        raise UdmError(f"the variational bound in bits/dim is implemented for the Gaussian (VP) process of data; got {process.describe()}")
    if variance not in BOUND_VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {list(BOUND_VARIANCES)}")
    check_images(x0, levels)
    predictor = unclipped(process, clip_denoised)
    x0_64, B = x0.double(), x0.shape[0]
    terms = torch.zeros(B, process.T + 1, dtype=torch.float64, device=x0.device)
    a_T, b2_T = process.a[process.T].double(), process.b[process.T].double() ** 2
    terms[:, process.T] = gaussian_kl(a_T * x0_64, b2_T, torch.zeros_like(x0_64), torch.ones_like(b2_T)).flatten(1).sum(1)
    for t_int in track(range(1, process.T + 1), description="bits/dim", disable=not progress, transient=True):
        t = torch.full((B,), t_int, dtype=torch.long, device=x0.device)
        x_t = process(x0, t, process.sample_noise(x0, generator))
        x0_hat = predictor.x0_hat(process.predict(model, x_t, t).double(), x_t.double(), t)
        if t_int == 1:  # mu~_1(x_1, x0_hat) = x0_hat
            std = decoder_variance(process).sqrt()
            terms[:, 0] = -log_bin_probability(x0_64, x0_hat, std, levels).flatten(1).sum(1)
            continue
        ab_t, ab_s = process.alphabar[t_int].double(), process.alphabar[t_int - 1].double()
        beta = 1 - ab_t / ab_s
        posterior_var = (1 - ab_s) / (1 - ab_t) * beta
        coef_x0 = ab_s.sqrt() * beta / (1 - ab_t)  # mu~_t(x_t, x0) - mu~_t(x_t, x0_hat) = coef_x0 (x0 - x0_hat)
        kl = gaussian_kl(coef_x0 * x0_64, posterior_var, coef_x0 * x0_hat, bound_variance(process, t_int, variance, gamma))
        terms[:, t_int - 1] = kl.flatten(1).sum(1)
    return terms


def bits_per_dim(
    process: Gaussian,
    model: Model,
    x0: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
    variance: str = "beta",
    levels: int = 256,
    clip_denoised: bool = False,
    gamma: Tensor | None = None,
) -> Tensor:
    """Negative log-likelihood bound of x0 in [-1, 1] ([B, ...], on a grid of `levels` values) in
    bits/dim, [B] float64: (L_T + sum_{t>=2} L_{t-1} + L_0) / (D ln 2). See `vlb_terms`."""
    terms = vlb_terms(process, model, x0, variance, levels, clip_denoised, generator, progress, gamma)
    return terms.sum(1) / (x0[0].numel() * math.log(2))


@torch.no_grad()
def token_nelbo(
    process: TokenMask,
    model: Model,
    x0: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """The negative ELBO of token sequences x0 [B, L] under absorbing diffusion, in nats per token, [B].

    At step t exactly k_t of the L positions are [MASK], a uniformly random subset, and the
    positions masked at t - 1 are a uniform subset of those masked at t (one ordering of the
    positions). So q(x_{t-1} | x_t, x0) reveals n_t = k_t - k_{t-1} uniformly chosen masked
    positions with their true tokens, and the model p(x_{t-1} | x_t) (random order, the net's
    own distribution: temperature 1) reveals a uniform subset of the same size with tokens drawn
    from p_theta(x0_i | x_t). The subsets have the same law and x_{t-1} shows which one was
    revealed, so

        KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) = E_S [ sum_{i in S} -log p_theta(x0_i | x_t) ]
                                                     = n_t / k_t * sum_{i masked in x_t} -log p_theta(x0_i | x_t).

    x_T is all [MASK] under q and p (k_T = L), so L_T = 0; the t = 1 term is the decoder
    -log p(x0 | x_1). The sum over t = 1..T is exact with one draw of x_t per t (steps with
    n_t = 0 add nothing and cost no network call); the result is divided by L.
    """
    if process.capabilities.likelihood != "token nelbo":
        raise UdmError(
            f"the token negative ELBO is implemented for [MASK] (absorbing) processes only; got {process.describe()} "
            "(the replacement process's reverse model has no tractable likelihood here)"
        )
    process.check_tokens(x0)
    if process.special_mask[x0].any():
        raise UdmError("x0 holds special tokens ([PAD], [MASK], ...) that the model never generates: its likelihood is 0")
    nelbo = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    steps = [t for t in range(1, process.T + 1) if process.k[t] > process.k[t - 1]]
    for t_int in track(steps, description="nelbo", disable=not progress, transient=True):
        t = torch.full((x0.shape[0],), t_int, dtype=torch.long, device=x0.device)
        x_t = process(x0, t, process.sample_noise(x0, generator))
        log_p = process.logits(model(x_t, t)).double().log_softmax(-1)
        nll = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # [B, L]
        masked = x_t == process.mask_id
        k_t, k_s = process.k[t_int].item(), process.k[t_int - 1].item()
        nelbo += (k_t - k_s) / k_t * torch.where(masked, nll, 0.0).sum(-1)
    return nelbo / process.length
