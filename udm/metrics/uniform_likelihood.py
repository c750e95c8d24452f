"""The negative ELBO of uniform-state token diffusion in continuous time (UDLM, Schiff et al. 2024, sec. 3;
duo, Sahoo et al. 2025, sec. 2), for udm.processes.TokenUniform.

Each position is corrupted on its own: with alpha_t falling from 1 (t = 0) to 0 (t = 1) and n regular tokens,

    q_t(z | x) = xbar_z / n,    xbar = n alpha_t onehot(x) + (1 - alpha_t) 1,

the marginal of the chain that jumps z -> y (y != z) at rate beta_t / n, beta_t = -alpha'_t / alpha_t. Its time
reversal given x jumps z -> y at rate (beta_t / n) xbar_y / xbar_z. The model reverses with the same rates, x
replaced by probabilities x_theta(z_t, t) over the regular tokens, xbar_theta = n alpha_t x_theta + (1 - alpha_t) 1
(the limit of duo's p(z_s | z_t) = q(z_s | z_t, x = x_theta)). The KL of the path measures (Campbell et al. 2022)
bounds -log p(x) by the expected sum over jumps of R_theta - R + R log(R / R_theta):

    NELBO = int_0^1 E_{z_t} sum_positions (-alpha'_t / (n alpha_t)) [ n / xbar_theta_i - n / xbar_i
            + sum_{y != i} (xbar_y / xbar_i) log(xbar_y xbar_theta_i / (xbar_i xbar_theta_y)) ] dt,    i = z_t there,

with no prior term (alpha_1 = 0: q_1 and p_1 are both uniform) and no reconstruction term (alpha_0 = 1: z_0 = x).
Since sum_y xbar_y = sum_y xbar_theta_y = n, the bracket is sum_y b_y phi(a_y / b_y) with b = xbar / xbar_i,
a = xbar_theta / xbar_theta_i and phi(r) = r - 1 - log r >= 0: a sum of nonnegative terms, zero when
x_theta = onehot(x); that form is the one computed (the large terms n / xbar never meet to cancel).

Which x_theta. udm's net is trained by cross-entropy, so its softmax x_hat estimates the posterior p(x0 | z_t),
which has already read the seen token z_t,i. The reverse model that matches it is the mixture
p(z_s | z_t) = sum_x q(z_s | z_t, x) x_hat(x) (the exact reverse when x_hat is exact); its rates are the ones
above with x_theta = the context posterior pi(x) ~ x_hat(x) / q(z_t,i | x), the seen token's own evidence taken
out by Bayes' rule (what the other positions say: TokenUniform.context_logits, which its x0_hat also draws from).
duo and UDLM put their softmax in as x_theta, having trained it on this very bound; a posterior put in as is
counts the seen token twice: on quatrain_uniform's checkpoint (1000 steps) that gives 11.3 nats per token, more
than the uniform model's log n = 8.5, against 6.2 with pi.

In alpha the integral is int_0^1 dalpha / (n alpha) E[...] for every schedule, so it is estimated with
alpha = 1 - tau, tau uniform; the process's schedule only says at which of its times the net is asked: the t in
1..T with k(t) >= 1 (the times it was trained at, some position corrupted) whose count k(t) is nearest L tau; its
own-token evidence is taken out at its level alpha_net = 1 - k(t) / L. The net was trained with exactly k(t)
corrupted positions; this bound, as UDLM's and duo's, is for independent corruption, the same in expectation.

Numerical care: float64 throughout, and tau kept in [eps, 1 - eps]. Near alpha = 0 the bracket is O(alpha^2)
(the integrand about n alpha at most), so the cut [1 - eps, 1] loses O(n eps^2). Near alpha = 1 the integrand grows
like log(n / tau) (a position corrupted with probability ~tau weighs ~1/tau), integrable: the cut [0, eps] leaves
out about eps (log(n / eps) + 1) nats per token for the uniform model (2.3e-5 with n = 4000 at the default
eps = 1e-6), less for a better one. The same growth makes the estimate heavy-tailed: average over many texts (or
draws per text), and read its standard error.
"""
from __future__ import annotations

import torch
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.processes.base import Model


def nelbo_integrand(alpha: Tensor, x_theta: Tensor, x: Tensor, z: Tensor) -> Tensor:
    """The integrand in alpha, (1 / (n alpha)) [ ... ], per position, float64.

    alpha: in (0, 1], broadcast against x. x_theta [..., n]: the model's probabilities over the n regular tokens.
    x, z [...]: the indices (0..n-1) among the regular tokens of the clean and of the noisy token.
    """
    n = x_theta.shape[-1]
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x_theta.device).expand(x.shape).unsqueeze(-1)
    xbar = (1 - alpha) + n * alpha * torch.nn.functional.one_hot(x, n).double()
    xbar_theta = (1 - alpha) + n * alpha * x_theta.double()
    i = z.unsqueeze(-1)
    b = xbar / xbar.gather(-1, i)
    r = xbar_theta / xbar_theta.gather(-1, i) / b
    bracket = (b * (r - 1 - r.log())).sum(-1)  # the y = i term is 0 (r = b = 1)
    return bracket / (n * alpha.squeeze(-1))


def net_time(process, tau: Tensor) -> Tensor:
    """[B] long: the time in 1..T with k(t) >= 1 whose count k(t) is nearest L tau (the first of equals)."""
    k = process.k[1:].double()
    gap = (k - process.length * tau.unsqueeze(-1)).abs().masked_fill(k == 0, float("inf"))
    return gap.argmin(-1) + 1


@torch.no_grad()
def uniform_nelbo(
    process,
    model: Model,
    x0: Tensor,
    generator: torch.Generator | None = None,
    progress: bool = False,
    draws: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """The negative ELBO of token sequences x0 [B, L] under uniform-state diffusion, in nats per token, [B] float64.

    One network call per text and draw: tau = eps + (1 - 2 eps) (j + u) / draws for the draws j (stratified, one
    u ~ U(0, 1) per text), alpha = 1 - tau, z_t with each position kept with probability alpha and otherwise a
    uniformly random regular token, x_theta the context posterior (process.context_logits) of the net's output at
    t = net_time(tau), its own-token evidence taken out at the net's level 1 - k(t) / L; the estimate is the mean over the draws of sum_positions
    nelbo_integrand / L. See the module's docstring for the bound, the choice of x_theta and the numerics.
    """
    if process.capabilities.likelihood != "uniform nelbo":
        raise UdmError(f"the uniform-state negative ELBO is implemented for uniform-state token processes "
                       f"(udm.processes.TokenUniform) only; got {process.describe()}")
    if draws < 1 or not 0 < eps < 0.5:
        raise UdmError(f"uniform_nelbo needs draws >= 1 and 0 < eps < 0.5, got draws={draws}, eps={eps}")
    process.check_tokens(x0)
    if process.special_mask[x0].any():
        raise UdmError("x0 holds special tokens ([PAD], [MASK], ...) that the model never generates: its likelihood is 0")
    B, n, device = x0.shape[0], len(process.regular), x0.device
    x = process.index[x0]
    u = torch.rand(B, device=device, generator=generator, dtype=torch.float64)
    nelbo = torch.zeros(B, dtype=torch.float64, device=device)
    for j in track(range(draws), description="nelbo", disable=not progress, transient=True):
        tau = eps + (1 - 2 * eps) * (j + u) / draws
        alpha = (1 - tau).unsqueeze(-1)
        keep = torch.rand(x.shape, device=device, generator=generator, dtype=torch.float64) < alpha
        z = torch.where(keep, x, torch.randint(0, n, x.shape, device=device, generator=generator))
        t = net_time(process, tau)
        z_t, alpha_net = process.regular[z], (1 - process.k[t].double() / process.length).unsqueeze(-1)
        logits = process.context_logits(process.logits(model(z_t, t)).double(), z_t, alpha_net)
        nelbo += nelbo_integrand(alpha, logits.softmax(-1)[..., process.regular], x, z).sum(-1)
    return nelbo / (draws * process.length)
