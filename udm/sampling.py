"""The one reverse loop of the unified model (DESIGN.md section 1).

For s < t:  x0_hat = p(x0 | x_t) from the network, then x_s ~ p(x_s | x_t, x0 = x0_hat) by

    baseline  x_s = F_s(x0_hat, z),                                  z ~ q (fresh)
    inverse   x_s = F_s(x0_hat, eps_hat),                            eps_hat = F_t^{-1}(x0_hat, x_t)
    mixed     x_s = F_s(x0_hat, sqrt(1 - r^2) eps_hat + r z),        q = N(0, I), r = r(t, s, eta)

DDPM ancestral sampling (both variances), DDIM with any eta, step skipping and the
improved cold/discrete samplers are all this loop with different arguments. DPM-Solver++(2M)
(Lu et al. 2022) is the inverse step with x0_hat extrapolated from the last two predictions
(`extrapolate='dpm_solver_2m'`), so it applies to every invertible process. For processes
with a score (Gaussian VP and VE), `corrector_steps` adds Langevin corrector steps after each
reverse step (predictor-corrector sampling, Song et al. 2021), and `annealed_langevin` is
SMLD's sampler (Song & Ermon 2019) over the same noise levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from rich.progress import track
from torch import Tensor

from udm.processes.base import ForwardProcess, expand_as

METHODS = ("auto", "baseline", "inverse", "mixed")
EXTRAPOLATIONS = ("none", "dpm_solver_2m")

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


SPACINGS = ("uniform", "solver_time")


def solver_timesteps(process: ForwardProcess, steps: int, start: int | None = None) -> list[int]:
    """`steps` decreasing steps start = t_1 > ... > t_n >= 1 evenly spaced in the process's solver time
    lambda(t) (log-SNR for Gaussian processes, as DPM-Solver recommends), rounded to distinct integers."""
    start = process.T if start is None else int(start)
    if not 1 <= steps <= start:
        raise ValueError(f"steps must lie in 1..{start} (the starting step), got {steps}")
    lam = process.solver_time(torch.arange(1, start + 1)).double()  # lam[t - 1] = lambda(t), increasing toward t = 1
    # The grid starts below the steep end of the schedule: where one integer step jumps further in
    # lambda than the grid's spacing (cosine's clipped last betas), evenly spaced targets would all
    # round to the top few t. The first step stays at `start`.
    low = start
    while low > 1 and float(lam[low - 2] - lam[low - 1]) > float(lam[0] - lam[low - 1]) / max(steps - 1, 1):
        low -= 1
    targets = torch.linspace(float(lam[low - 1]), float(lam[0]), steps, dtype=torch.float64)
    ts = [int((lam - v).abs().argmin()) + 1 for v in targets]  # t_1 ~ low, ..., t_n = 1
    ts[0] = start
    for i in range(1, steps):  # distinct and decreasing, leaving room for the steps still to come
        ts[i] = max(min(ts[i], ts[i - 1] - 1), steps - i)
    return ts


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
    corrector_steps: int = 0,
    snr: float = 0.16,
    extrapolate: str = "none",
    spacing: str = "uniform",
) -> Tensor:
    """Run the reverse process from x_T to x_0 with `model(x_t, t)` giving the raw network output.

    steps=None, eta=1 is DDPM ancestral sampling; eta=0 with any `steps` is DDIM;
    variance='beta' gives DDPM's sigma_t^2 = beta_t. `method='auto'` takes the best step
    the process supports (mixed, else inverse, else baseline). `t_start` < T starts the
    loop from an x_T that is really x_{t_start} (restoring partly degraded inputs).
    `corrector_steps` Langevin steps at signal-to-noise ratio `snr` follow every step that
    does not end at t = 0 (the predictor-corrector sampler). `extrapolate='dpm_solver_2m'`
    replaces x0_hat by its second-order extrapolation in the process's solver time (with
    eta = 0 on a Gaussian process this is exactly DPM-Solver++(2M)). `spacing='solver_time'`
    spaces `steps` evenly in that solver time instead of in t.
    """
    method = resolve_method(process, method)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {list(SPACINGS)}")
    if spacing == "solver_time" and timesteps is None and steps is not None:
        ts = solver_timesteps(process, int(steps), t_start)
    else:
        ts = make_timesteps(process.T, timesteps, steps, t_start)
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    if corrector_steps:
        require_score(process)
    if extrapolate not in EXTRAPOLATIONS:
        raise ValueError(f"unknown extrapolate {extrapolate!r}; choose one of {list(EXTRAPOLATIONS)}")
    if extrapolate != "none" and not process.extrapolates_x0:
        raise ValueError(f"extrapolate={extrapolate!r} does not apply to {type(process).__name__}: {process.extrapolates_x0_reason}")
    if extrapolate != "none" and method == "baseline":
        raise ValueError(f"extrapolate={extrapolate!r} needs the inverse or mixed step; {type(process).__name__} takes the baseline")
    x, batch = x_T, x_T.shape[0]
    pairs = list(zip(ts, ts[1:] + [0]))
    lam = process.solver_time(torch.tensor(ts + [0])).tolist() if extrapolate != "none" else None  # once, no syncs in the loop
    previous, lam_previous, unchanged = None, None, process.unchanged(ts)
    for i, (t_int, s_int) in enumerate(track(pairs, description="sampling", disable=not progress, transient=True)):
        if unchanged[i]:  # e.g. [MASK] diffusion with more steps than tokens: nothing to reveal, no network call
            continue
        t = torch.full((batch,), t_int, dtype=torch.long, device=x.device)
        s = torch.full((batch,), s_int, dtype=torch.long, device=x.device)
        x0_hat = process.x0_hat(model(x, t), x, t, generator)
        if lam is not None:
            x0_hat, previous, lam_previous = dpm_solver_2m(x0_hat, previous, lam_previous, lam[i], lam[i + 1]), x0_hat, lam[i]
        x = reverse_step(process, x, x0_hat, t, s, method, eta, variance, generator)
        for _ in range(corrector_steps if s_int > 0 else 0):
            x = langevin_corrector(process, model, x, s, snr, generator)
    return x


def dpm_solver_2m(x0_hat: Tensor, previous: Tensor | None, lam_prev: float | None, lam_t: float, lam_s: float) -> Tensor:
    """DPM-Solver++(2M)'s D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev with r = h_prev / h,
    h = lambda_s - lambda_t, h_prev = lambda_t - lambda_prev (Lu et al. 2022, alg. 2).

    The first step has no history and the last (into lambda = inf, t = 0) is first order,
    as in the paper: both return x0_hat unchanged.
    """
    if not torch.is_tensor(x0_hat) or not x0_hat.is_floating_point():
        raise ValueError("extrapolate='dpm_solver_2m' needs real-valued x0 predictions (not tokens)")
    if previous is None or not math.isfinite(lam_s) or not math.isfinite(lam_prev):
        return x0_hat
    ratio = 1 / (2 * ((lam_t - lam_prev) / (lam_s - lam_t)))
    return (1 + ratio) * x0_hat - ratio * previous


def require_score(process: ForwardProcess) -> None:
    if not hasattr(process, "score"):
        raise ValueError(f"Langevin steps need a score; {type(process).__name__} has none (use a Gaussian or VE process)")


def langevin_corrector(process: ForwardProcess, model: Model, x: Tensor, t: Tensor, snr: float, generator=None) -> Tensor:
    """One Langevin step x + e grad + sqrt(2e) z with e = 2 (snr |z| / |grad|)^2 (Song et al. 2021, alg. 4).

    The norms are per-sample norms averaged over the batch, as in the paper's code: a
    per-sample ratio is unstable in low dimension, where |grad| of one sample can be ~0.
    """
    grad = process.score(model(x, t), x, t)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    grad_norm, z_norm = grad.flatten(1).norm(dim=1).mean(), z.flatten(1).norm(dim=1).mean()
    step = 2 * (snr * z_norm / grad_norm.clamp(min=1e-12)) ** 2
    return x + step * grad + (2 * step).sqrt() * z


@torch.no_grad()
def annealed_langevin(
    process: ForwardProcess,
    model: Model,
    x_T: Tensor,
    timesteps: Sequence[int] | None = None,
    steps: int | None = None,
    steps_per_level: int = 10,
    step_lr: float = 2e-5,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    progress: bool = False,
    t_start: int | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, alg. 1) over the process's noise levels.

    At each level t (largest first), `steps_per_level` steps x <- x + alpha/2 grad + sqrt(alpha) z
    with alpha = step_lr * (sigma_t / sigma_min)^2, sigma_min the last level visited. With
    `denoise`, the result is the x0 prediction at the last level (Tweedie's formula), which
    removes the sigma_min noise the chain ends with.
    """
    require_score(process)
    if steps_per_level < 1 or step_lr <= 0:
        raise ValueError(f"need steps_per_level >= 1 and step_lr > 0, got {steps_per_level}, {step_lr}")
    ts = make_timesteps(process.T, timesteps, steps, t_start)
    x, batch = x_T, x_T.shape[0]
    sigma_min = float(process.noise_scale(torch.tensor([ts[-1]], device=x.device)))
    for t_int in track(ts, description="langevin", disable=not progress, transient=True):
        t = torch.full((batch,), t_int, dtype=torch.long, device=x.device)
        alpha = step_lr * (float(process.noise_scale(t[:1])) / sigma_min) ** 2
        for _ in range(steps_per_level):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + alpha / 2 * process.score(model(x, t), x, t) + alpha**0.5 * z
    if denoise:
        x = process.x0_hat(model(x, t), x, t, generator)
    return x
