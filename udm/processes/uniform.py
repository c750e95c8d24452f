"""Uniform-state token diffusion (D3PM-uniform, Austin et al. 2021; UDLM, Schiff et al. 2024; duo, Sahoo et al. 2025).

As for the other token processes (udm.processes.discrete) F_t corrupts the k(t) positions with the smallest keys,
but a corrupted position takes a uniformly random regular token, the original included: the offset o in 0..n-1
moves the token to regular[(index(x0) + o) mod n], and o = 0 (probability 1/n) leaves it as it was. So a position
differs from x0 with probability k(t)/L * (n-1)/n, and x_T (k(T) = L) is uniform over the n regular tokens.

Its negative ELBO is udm.metrics.uniform_nelbo (the process declares likelihood='uniform nelbo').
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from udm.processes.discrete import TokenEstimate, TokenNoise, TokenProcess, tokens_of


class TokenUniform(TokenProcess):
    """Corrupted positions hold a uniformly random regular token (possibly the original); x_T is uniform.

    x0_hat redraws the k(t) positions the model doubts most (1 - q(x0_i = x_t,i | x_t)), as the edit model does:
    the corrupted set has exactly k(t) positions. A corrupted position's token is uniform whatever x0 was, so it
    says nothing about x0 there: the draw is from q(x0_i | x_t) with that token's own evidence taken out
    (`context_logits`), which may give the seen token back (a corrupted position holds the original with
    probability 1/n) when the other positions argue for it. The edit model's x0_hat is the same rule for its
    noise, which never holds the original: the seen token ruled out. x_t then differs from x0_hat at d <= k(t)
    positions, and the inverse step keeps min(k(s), d) of those as they are in x_t and restores the rest (at most
    k(t) - k(s) tokens per step); the last step returns x0_hat. An oracle (q(x0 | x_t) = onehot(x0)) doubts exactly
    the positions where x_t differs from x0, at most k(t) of them, and restores them all to x0.
    The model must also learn which tokens are intact, so the loss covers all positions by default.
    """

    capabilities = dataclasses.replace(TokenProcess.capabilities, likelihood="uniform nelbo")

    def __init__(self, loss_on: str = "all", **kwargs):
        super().__init__(loss_on=loss_on, **kwargs)

    def sample_noise(self, x0: Tensor | TokenEstimate, generator: torch.Generator | None = None) -> TokenNoise:
        shape, device = tokens_of(x0).shape, tokens_of(x0).device
        keys = torch.rand(shape, device=device, generator=generator)
        offsets = torch.randint(0, len(self.regular), shape, device=device, generator=generator)  # 0: the original
        return TokenNoise(keys, offsets)

    def corrupt(self, x0: Tensor, offsets: Tensor) -> Tensor:
        return torch.where(offsets == 0, x0, self.regular[(self.index[x0] + offsets) % len(self.regular)])

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.regular[torch.randint(0, len(self.regular), x0.shape, device=x0.device, generator=generator)]

    def context_logits(self, logits: Tensor, x_t: Tensor, alpha: Tensor) -> Tensor:
        """log q(x0 | x_t) [B, L, V] with each seen token's own evidence taken out by Bayes' rule: what the other
        positions say a position holds if it is corrupted. alpha [B, 1] (or broadcastable to x_t) is the chance a
        position is intact, 1 - k(t) / L; q(x_t,i | x0_i) is alpha + (1 - alpha) / n for x0_i = x_t,i and
        (1 - alpha) / n otherwise, so only the seen token's logit moves, by log((1 - alpha) / (n alpha + 1 - alpha))."""
        n = len(self.regular)
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=logits.device).expand(x_t.shape)
        shift = torch.log1p(-alpha) - torch.log(n * alpha + 1 - alpha)
        return logits.scatter_add(-1, x_t.unsqueeze(-1), shift.unsqueeze(-1).to(logits.dtype))

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> TokenEstimate:
        logits = self.logits(out)
        redrawn = self.most_doubted(logits, x_t, t, generator)
        intact = 1 - self.k[t].unsqueeze(-1).double() / self.length  # alpha at t (k = 0 redraws nothing)
        context = self.context_logits(logits, x_t, intact)
        tokens = torch.where(redrawn, self.draw(context, generator), x_t)
        return self.estimate(torch.where(redrawn.unsqueeze(-1), context, logits), tokens, generator)
