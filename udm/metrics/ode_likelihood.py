"""Exact log-likelihood of an affine Gaussian process's model by its probability-flow ODE (Song et al. 2021,
"Score-based generative modeling through SDEs", sec. 4.3 and app. D.2), for every schedule.

The ODE. For x_u = a(u) x0 + b(u) eps (u = t / T in [0, 1]) the marginals p_u are transported by

    dx/du = v(x, u) = a'(u) x0_hat(x, u) + b'(u) eps_hat(x, u),

x0_hat and eps_hat the model's estimates at x (eps_hat = (x - a x0_hat) / b). With the score s = -eps_hat / b this
is the usual f x - g^2 s / 2, f = a'/a, g^2 = (b^2)' - 2 (a'/a) b^2: (a'/a) x + (b' - a' b / a) eps_hat, which
equals the form above once x = a x0_hat + b eps_hat is substituted. That form has no division by a, so it holds
at u = 1 of the flow schedule (a = 0) for the parametrizations whose x0_hat stays finite there (x0, v, velocity).

The likelihood. Along a solution, d/du log p_u(x_u) = -div_x v(x_u, u), so

    log p(x0) = log p_1(x_1) + int_{u_eps}^{1} div_x v(x_u, u) du,    x_{u_eps} = x0,

with p_1 taken as the prior the process samples from (process.prior: N(0, I) for variance-preserving schedules,
N(0, b(1)^2 I) otherwise): the log-likelihood is that of the model that samples by this ODE from that prior. The
pair (x, int div) is integrated jointly by torchdiffeq's adaptive solvers (dopri5 by default) in float64; the net
sees x in the data's dtype.

Why u_eps > 0: the data end is singular. b(0) = 0, so eps_hat = (x - a x0_hat) / b is 0/0 there, and b'(u) is
infinite at u = 0 on the VP tables (b ~ sqrt(u)) and below EDM's sigma_min (sigma^2 linear in u); the score
of data on a grid is unbounded as u -> 0. Starting at u_eps (1e-5 by default) treats x0 as a sample of
p_{u_eps}, which differs from the data by noise of scale b(u_eps) (3e-3 on DDPM's linear table, 2e-4 on EDM's
schedule, 1e-5 for flow), well below a pixel level (2/255). Where a(1) = 0 (flow) and the parametrization's
x0_hat divides by a (eps, edm), the ODE ends at u = 1 - u_eps instead.

Accuracy. On the DDPM tables (vp_linear, vp_cosine) log a^2 is linear between grid points, so a' and b' jump at
each of the T points and the velocity has T kinks in u; the adaptive solver steps over them with an error the
step-size control does not see: about 4e-4 nats/dim at rtol = atol = 1e-5 on 16-dimensional Gaussian data with
the exact model (tests/test_ode_likelihood.py), shrinking only slowly with the tolerances. The smooth schedules
(flow, EDM's geometric, the continuous cosine) converge as the tolerances shrink.

The divergence: 'exact' sums D backward passes (d dv_i/dx_i, one per coordinate, on one forward pass; for small D)
or 'hutchinson' (Hutchinson 1989; FFJORD, Grathwohl et al. 2019): z^T (dv/dx) z with one probe z per sample,
Rademacher (default) or Gaussian, drawn once and kept for the whole solve, so the integral is an unbiased
estimate of the exact one (E[z z^T] = I) and log p an unbiased estimate of the ODE's log-likelihood.

Bits/dim (ode_bits_per_dim), for data on the grid of `levels` values in [-1, 1], x0 = k * 2 / (levels - 1) - 1
(levels = 256: k / 127.5 - 1, as udm's image data and udm.metrics.likelihood use). The bins are those of
DDPM's discretized decoder there: width w = 2 / (levels - 1), centred on the grid points. A density p on R^D
gives the bin the probability P(bin) = int_bin p >= w^D exp(E_u log p(x0 + w (u - 1/2))), u ~ U[0, 1)^D
(uniform dequantization; Jensen), so

    bpd = ( -log p(x0 + delta) / D + log((levels - 1) / 2) ) / ln 2,    delta = w (u - 1/2) (or 0: dequantize=False)

is, in expectation over delta, an upper bound on -log2 P(bin) / D: the same quantity the discrete bound
(udm.metrics.likelihood.bits_per_dim) bounds. The offset is log2(127.5) = 6.9944 bits for 8-bit data. Song et
al.'s code adds 7 = log2(128) instead (it dequantizes onto [0, 256) / 256, bins of width 2/256 in [-1, 1]); the
two conventions differ by log2(128 / 127.5) = 0.0056 bits/dim. dequantize=False scores the density at the bin
centres (what many papers report as "NLL"), which is not a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import Model, per_sample
from udm.processes.capabilities import require

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass
class OdeLikelihood:
    """The pieces of one solve, each [B] float64 unless said: log_p = prior_logp + divergence (nats per sample)."""

    log_p: Tensor
    prior_logp: Tensor    # log N(x_1; 0, prior_std^2 I)
    divergence: Tensor    # int_{u_eps}^{u_end} div v du
    x1: Tensor            # the end state x(u_end), [B, ...] float64
    u_end: float
    prior_std: float
    nfe: int              # velocity evaluations (each one forward and one or D backward passes of the net)


def velocity(process, model: Model, x: Tensor, u: Tensor, dtype: torch.dtype, cond=None) -> Tensor:
    """v(x, u) = a'(u) x0_hat + b'(u) eps_hat, float64, from the net's unclipped estimates at x (float64)."""
    t = (u.double() * process.T).expand(x.shape[0]).to(x.device)
    out = process.predict(model, x.to(dtype), t, cond).double()
    x0_hat = process.predicted_x0(out, x, t)  # unclipped: clipping would make the flow non-invertible
    eps_hat = out if process.parametrization == "eps" else process.eps_hat(out, x, t)
    da, db = process.derivatives(t)
    return per_sample(da.to(x.device), x) * x0_hat + per_sample(db.to(x.device), x) * eps_hat


def draw_probes(x0: Tensor, probe: str, generator: torch.Generator | None) -> Tensor:
    if probe == "rademacher":
        return torch.randint(0, 2, x0.shape, generator=generator, device=x0.device).double() * 2 - 1
    return torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)


def check_process(process, who: str = "the probability-flow ODE likelihood") -> None:
    require(process, "continuous_time", who, "its likelihood needs the ODE in real-valued time u")
    if not all(hasattr(process, name) for name in ("schedule", "derivatives", "predicted_x0")):
        raise UdmError(f"{who} needs an affine Gaussian process (x_t = a x0 + b eps); got {process.describe()}")


def ode_log_likelihood(
    process,
    model: Model,
    x0: Tensor,
    divergence: str = "hutchinson",
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    u_eps: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    cond=None,
) -> OdeLikelihood:
    """log p(x0) of the model under its probability-flow ODE, in nats per sample ([B] float64 in .log_p), for x0
    [B, ...] real-valued (any shape); see the module docstring for the ODE, the prior, u_eps and the divergence.
    `model(x_t, t)` gives the net's raw output (t in grid units, real-valued); torchdiffeq.odeint(method, rtol,
    atol) integrates from u_eps to 1 (the error control is over the whole batch: one step size for all)."""
    from torchdiffeq import odeint

    check_process(process)
    if divergence not in DIVERGENCES:
        raise UdmError(f"unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
    if probe not in PROBES:
        raise UdmError(f"unknown probe {probe!r}; choose one of {list(PROBES)}")
    if not 0 < u_eps < 0.5:
        raise UdmError(f"u_eps (where the ODE starts, near the data) must lie in (0, 0.5), got {u_eps}")
    if not x0.is_floating_point() or x0.dim() < 2:
        raise UdmError(f"the ODE likelihood needs real-valued data x0 [B, ...], got {x0.dtype} {list(x0.shape)}")
    dtype, dim = x0.dtype, x0[0].numel()
    z = draw_probes(x0, probe, generator) if divergence == "hutchinson" else None
    nfe = 0

    def dynamics(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = velocity(process, model, x, u, dtype, cond)
            if z is not None:
                grad, = torch.autograd.grad((v * z).sum(), x)
                div = (grad * z).flatten(1).sum(1)
            else:
                flat, div = v.flatten(1), torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
                for i in range(dim):
                    grad, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < dim - 1)
                    div = div + grad.flatten(1)[:, i]
        return v.detach(), div.detach()

    u_end = 1.0  # x0_hat is defined at u = 1: the process refuses eps / edm where a(1) = 0
    times = torch.tensor([u_eps, u_end], dtype=torch.float64, device=x0.device)
    start = (x0.double(), torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device))
    with torch.no_grad():
        xs, integrals = odeint(dynamics, start, times, rtol=rtol, atol=atol, method=method)
    x1, integral = xs[-1], integrals[-1]
    std = process.prior_std
    prior_logp = -0.5 * (x1.flatten(1) ** 2).sum(1) / std**2 - 0.5 * dim * math.log(2 * math.pi * std**2)
    return OdeLikelihood(prior_logp + integral, prior_logp, integral, x1, u_end, std, nfe)


def dequantization_offset(levels: int) -> float:
    """log((levels - 1) / 2) nats per dimension: -log of the bin width 2 / (levels - 1) of data in [-1, 1]."""
    return math.log((levels - 1) / 2)


def ode_bits_per_dim(
    process,
    model: Model,
    x0: Tensor,
    levels: int = 256,
    dequantize: bool = True,
    generator: torch.Generator | None = None,
    details: bool = False,
    **solver,
) -> Tensor | tuple[Tensor, OdeLikelihood]:
    """bits/dim of x0 in [-1, 1] (on the grid of `levels` values) under the ODE's density, [B] float64:
    (-log p(x0 + delta) / D + log((levels - 1) / 2)) / ln 2, delta uniform in the bin (dequantize) or 0.
    `solver`: ode_log_likelihood's knobs (divergence, probe, rtol, atol, u_eps, method, cond); details=True
    returns (bits/dim, the solve's OdeLikelihood)."""
    from udm.metrics.likelihood import check_images

    check_images(x0, levels)
    x = x0
    if dequantize:
        width = 2.0 / (levels - 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)
        x = (x0.double() + width * (u - 0.5)).to(x0.dtype)
    solve = ode_log_likelihood(process, model, x, generator=generator, **solver)
    bpd = (-solve.log_p / x0[0].numel() + dequantization_offset(levels)) / math.log(2)
    return (bpd, solve) if details else bpd
