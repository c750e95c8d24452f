"""The one reverse loop of the unified model (DESIGN.md section 1).

For s < t:  x0_hat = p(x0 | x_t) from the network, then x_s ~ p(x_s | x_t, x0 = x0_hat) by

    baseline  x_s = F_s(x0_hat, z),                                  z ~ q (fresh)
    inverse   x_s = F_s(x0_hat, eps_hat),                            eps_hat = F_t^{-1}(x0_hat, x_t)
    mixed     x_s = F_s(x0_hat, sqrt(1 - r^2) eps_hat + r z),        q = N(0, I), r = r(t, s, eta)

DDPM ancestral sampling (both variances), DDIM with any eta, step skipping and the
improved cold/discrete samplers are all this loop with different arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from rich.progress import track
from torch import Tensor

from udm.processes.base import ForwardProcess, expand_as

METHODS = ("auto", "baseline", "inverse", "mixed")

Model = Callable[[Tensor, Tensor], Tensor]


def make_timesteps(T: int, timesteps: Sequence[int] | None = None, steps: int | None = None, start: int | None = None) -> list[int]:
    """The decreasing noisy steps t_1 > ... > t_n >= 1 the loop visits before ending at t = 0.

    `timesteps` is taken as given (checked); otherwise `steps` evenly spaced steps that
    start at `start` (default T; "trailing" spacing), all `start` of them when steps is None.
    """
    if timesteps is not None:
        ts = [int(t) for t in timesteps]
        if not ts:
            raise ValueError("timesteps is empty")
        if any(t < 1 or t > T for t in ts):
            raise ValueError(f"timesteps must lie in 1..T = 1..{T}, got {ts}")
        if any(a <= b for a, b in zip(ts, ts[1:])):
            raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
        return ts
    start = T if start is None else int(start)
    if not 1 <= start <= T:
        raise ValueError(f"the starting step must lie in 1..T = 1..{T}, got {start}")
    steps = start if steps is None else int(steps)
    if not 1 <= steps <= start:
        raise ValueError(f"steps must lie in 1..{start} (the starting step; T = {T}), got {steps}")
    return [round(start * i / steps) for i in range(steps, 0, -1)]


def resolve_method(process: ForwardProcess, method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {list(METHODS)}")
    if method == "auto":
        return "mixed" if process.noise_is_normal else "inverse" if process.invertible else "baseline"
    if method in ("inverse", "mixed") and not process.invertible:
        raise ValueError(f"method={method!r} needs an invertible process; {type(process).__name__} is not")
    if method == "mixed" and not process.noise_is_normal:
        raise ValueError(f"method='mixed' needs q(eps) = N(0, I); {type(process).__name__} has other noise")
    return method


def reverse_step(
    process: ForwardProcess,
    x_t: Tensor,
    x0_hat: Tensor,
    t: Tensor,
    s: Tensor,
    method: str = "mixed",
    eta: float = 0.0,
    variance: str = "ddim",
    generator: torch.Generator | None = None,
    z: Tensor | None = None,
) -> Tensor:
    """One draw x_s ~ p(x_s | x_t, x0 = x0_hat); t, s are LongTensors [B] with s < t.

    `z` overrides the fresh noise (tests pass it to read off the step's mean and spread).
    """
    if method == "baseline":
        return process(x0_hat, s, process.sample_noise(x0_hat, generator) if z is None else z)
    eps_hat = process.inverse(x0_hat, x_t, t)
    if method == "inverse":
        return process(x0_hat, s, eps_hat)
    r_eps, r_z = process.noise_ratio(t, s, eta, variance)
    z = process.sample_noise(x0_hat, generator) if z is None else z
    return process(x0_hat, s, expand_as(r_eps, eps_hat) * eps_hat + expand_as(r_z, z) * z)


@torch.no_grad()
def sample(
    process: ForwardProcess,
    model: Model,
    x_T: Tensor,
    timesteps: Sequence[int] | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    variance: str = "ddim",
    method: str = "auto",
    generator: torch.Generator | None = None,
    progress: bool = False,
    t_start: int | None = None,
) -> Tensor:
    """Run the reverse process from x_T to x_0 with `model(x_t, t)` giving the raw network output.

    steps=None, eta=1 is DDPM ancestral sampling; eta=0 with any `steps` is DDIM;
    variance='beta' gives DDPM's sigma_t^2 = beta_t. `method='auto'` takes the best step
    the process supports (mixed, else inverse, else baseline). `t_start` < T starts the
    loop from an x_T that is really x_{t_start} (restoring partly degraded inputs).
    """
    method = resolve_method(process, method)
    ts = make_timesteps(process.T, timesteps, steps, t_start)
    x, batch = x_T, x_T.shape[0]
    pairs = list(zip(ts, ts[1:] + [0]))
    for t_int, s_int in track(pairs, description="sampling", disable=not progress, transient=True):
        t = torch.full((batch,), t_int, dtype=torch.long, device=x.device)
        s = torch.full((batch,), s_int, dtype=torch.long, device=x.device)
        x0_hat = process.x0_hat(model(x, t), x, t, generator)
        x = reverse_step(process, x, x0_hat, t, s, method, eta, variance, generator)
    return x
