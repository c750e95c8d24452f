"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance from Gamma_t = E ||eps_theta(x_t, t)||^2 / d.

Gamma_t (b_t^2 times the mean squared score, per dimension) is estimated once per model by
Monte Carlo over the training data and cached beside the checkpoint as `analytic-<key>.pt`;
`analytic_variance` turns it into sigma*^2, which the step rule `udm.samplers.AnalyticStep`
draws with (`udm.samplers.AnalyticDPM.prepare` estimates or reads Gamma_t for a checkpoint).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.processes import Gaussian
from udm.processes.base import Model
from udm.processes.capabilities import require

MOMENT_DEFAULTS = {"num_samples": 100, "batch_size": 500, "seed": 0}


def draw_rows(data: Tensor | Iterable[Tensor], n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n data rows: a random subset of a tensor (with replacement only when n exceeds it), or
    the first n rows an iterable of batches (a DataLoader) yields."""
    if isinstance(data, Tensor):
        if len(data) == 0:
            raise UdmError("no training data to estimate the eps moments on")
        g_device = generator.device if generator is not None else "cpu"
        if n <= len(data):
            idx = torch.randperm(len(data), generator=generator, device=g_device)[:n]
        else:
            idx = torch.randint(0, len(data), (n,), generator=generator, device=g_device)
        return data[idx.to(data.device)].to(device)
    rows, count = [], 0
    for batch in data:
        rows.append(batch.to(device))
        count += len(batch)
        if count >= n:
            break
    if not rows:
        raise UdmError("no training data to estimate the eps moments on")
    return torch.cat(rows)[:n]


@torch.no_grad()
def eps_moments(
    process: Gaussian,
    model: Model,
    data: Tensor | Iterable[Tensor],
    num_samples: int = MOMENT_DEFAULTS["num_samples"],
    batch_size: int = MOMENT_DEFAULTS["batch_size"],
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Gamma_t = 1/M sum_m ||eps_theta(x_{t,m}, t)||^2 / d for t = 0..T, [T + 1] float64.

    x_{t,m} = a_t x0_m + b_t eps_{t,m} ~ q(x_t): M = num_samples training rows x0_m, a fresh
    eps for every (t, m); `batch_size` pairs (t, m) per network call. eps_theta is the net's
    eps whatever it predicts. Gamma_0 = 1 by convention (x_0 = x0 leaves nothing unknown,
    Var(x0 | x_0) = b_0^2 / a_0^2 (1 - Gamma_0) = 0).
    """
    require(process, "analytic_variance", "Analytic-DPM's eps moments")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples}, {batch_size}")
    device = process.alphabar.device
    x0 = draw_rows(data, num_samples, generator, device)
    M, T = len(x0), process.T
    sums = torch.zeros(T + 1, dtype=torch.float64, device=device)
    pairs = torch.arange(T * M, device=device)  # t-major: pair i is (t = 1 + i // M, m = i % M)
    for chunk in track(pairs.split(batch_size), description="eps moments", disable=not progress, transient=True):
        t, rows = 1 + chunk // M, x0[chunk % M]
        x_t = process(rows, t, process.sample_noise(rows, generator))
        eps = process.eps_hat(process.predict(model, x_t, t), x_t, t)
        sums.index_add_(0, t, eps.double().flatten(1).pow(2).mean(1))
    gamma = sums / M
    gamma[0] = 1.0
    return gamma


def moments_path(ckpt_path: str | Path, num_samples: int, batch_size: int, seed: int) -> Path:
    """<checkpoint folder>/analytic-<key>.pt, the key naming the checkpoint file (name, size,
    modification time) and the estimate's settings, so a changed model or setting is re-estimated."""
    ckpt_path = Path(ckpt_path)
    stat = ckpt_path.stat()
    fingerprint = f"{ckpt_path.name}:{stat.st_size}:{stat.st_mtime_ns}:{num_samples}:{batch_size}:{seed}"
    return ckpt_path.parent / f"analytic-{hashlib.sha1(fingerprint.encode()).hexdigest()[:12]}.pt"


def cached_eps_moments(
    process: Gaussian,
    model: Model,
    ckpt_path: str | Path,
    data: Tensor | Iterable[Tensor] | Callable[[], Tensor | Iterable[Tensor]],
    num_samples: int = MOMENT_DEFAULTS["num_samples"],
    batch_size: int = MOMENT_DEFAULTS["batch_size"],
    seed: int = MOMENT_DEFAULTS["seed"],
    progress: bool = False,
) -> Tensor:
    """`eps_moments` of the checkpoint's model, read from its cache file or estimated and cached.

    `data` may be a zero-argument function that loads the training data, so a cached estimate
    never loads it. The estimate is seeded (`seed`) and hence reproducible.
    """
    path = moments_path(ckpt_path, num_samples, batch_size, seed)
    if path.is_file():
        gamma = torch.load(path, map_location="cpu", weights_only=True)["gamma"]
        if gamma.shape == (process.T + 1,):
            return gamma
    rows = data() if callable(data) else data
    device = process.alphabar.device
    generator = torch.Generator(device).manual_seed(seed)
    gamma = eps_moments(process, model, rows, num_samples, batch_size, generator, progress).cpu()
    record = {"gamma": gamma, "checkpoint": Path(ckpt_path).name, "num_samples": num_samples, "batch_size": batch_size, "seed": seed}
    try:
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(record, partial)
        os.replace(partial, path)
    except OSError as e:  # a read-only checkpoint folder: use the estimate without caching it
        print(f"analytic: could not cache the eps moments in {path} ({e.strerror}); they will be re-estimated next time")
    return gamma


def training_rows(recipe: dict[str, Any]) -> Tensor:
    """The training split of a checkpoint's data (its recipe's data config)."""
    data = instantiate(recipe["data"])
    data.setup("fit")
    return data.train


def analytic_variance(process: Gaussian, gamma: Tensor, t: Tensor, s: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(lambda^2, sigma*^2) of Analytic-DPM (Bao et al. 2022) for the jump t -> s < t, given Gamma_0..T.

    The reverse step of the DDIM family, q_lambda(x_s | x_t, x0) = N(a_s x0 + sqrt(b_s^2 - lambda^2)
    (x_t - a_t x0) / b_t, lambda^2 I) with lambda^2 = eta^2 * posterior variance, has the
    optimal variance (their Theorem 1, on a shorter trajectory for s < t - 1)

        sigma*^2 = lambda^2 + (sqrt(b_t^2 / alpha_{t|s}) - sqrt(b_s^2 - lambda^2))^2 (1 - Gamma_t),

    alpha_{t|s} = alphabar_t / alphabar_s and Gamma_t = b_t^2 E||grad log q_t||^2 / d, estimated
    as E||eps_theta||^2 / d. Written with the data's variance given x_t,
    Var(x0 | x_t) = b_t^2 / a_t^2 (1 - Gamma_t), it is

        sigma*^2 = lambda^2 + (a_s - sqrt((b_s^2 - lambda^2) a_t^2 / b_t^2))^2 Var(x0 | x_t),

    i.e. the fixed-x0_hat step plus the spread of an x0_hat drawn with variance Var(x0 | x_t)
    (DESIGN.md's sigmabar_t^2), which enters x_s with the factor a_s - sqrt(b_s^2 - lambda^2) a_t / b_t.
    Var(x0 | x_t) is clipped to [0, ((b - a) / 2)^2 = 1] for data in [a, b] = [-1, 1]
    (their Theorem 2: lambda^2 <= sigma*^2 <= the bound for bounded data); the upper clip
    applies when clip_denoised declares the data bounded. eta = 1 is Analytic-DDPM, eta = 0
    Analytic-DDIM.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"Analytic-DPM's family needs 0 <= eta <= 1, got {eta}")
    ab_t, ab_s = process.alphabar[t], process.alphabar[s]
    b2_t, b2_s = 1 - ab_t, 1 - ab_s
    lambda2 = eta**2 * b2_s / b2_t * (1 - ab_t / ab_s)
    x0_var = (b2_t / ab_t * (1 - gamma[t])).clamp(min=0.0)
    if process.clip_denoised:
        x0_var = x0_var.clamp(max=1.0)
    coef = (ab_s.sqrt() - ((b2_s - lambda2).clamp(min=0.0) * ab_t / b2_t).sqrt()) ** 2
    return lambda2, lambda2 + coef * x0_var


def check_moments(gamma: Tensor, T: int) -> Tensor:
    """Gamma_0..T as float64, checked: one finite, non-negative mean square per t."""
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    if gamma.shape != (T + 1,):
        raise UdmError(f"eps moments must hold one value per t = 0..T ({T + 1} values), got shape {list(gamma.shape)}")
    if not torch.isfinite(gamma).all() or (gamma < 0).any():
        raise UdmError("eps moments are mean squares: they must be finite and >= 0")
    return gamma


def moment_settings(settings: dict[str, int]) -> dict[str, int]:
    """The Monte Carlo estimate's settings with MOMENT_DEFAULTS for those left out; unknown names are refused."""
    unknown = set(settings) - set(MOMENT_DEFAULTS)
    if unknown:
        raise UdmError(f"unknown eps-moment settings {sorted(unknown)}; choose from {sorted(MOMENT_DEFAULTS)}")
    return {**MOMENT_DEFAULTS, **settings}


def model_eps_moments(process: Gaussian, net: Model, ckpt_path: str | Path, recipe: dict[str, Any], progress: bool = False,
                      **settings: int) -> Tensor:
    """Gamma_t of the checkpoint's net: read from the cache beside the checkpoint, or estimated on the
    checkpoint's training data and cached. `settings` are num_samples, batch_size and seed
    (MOMENT_DEFAULTS for those left out); the process and the net must be on the device to estimate on.
    """
    settings = moment_settings(settings)
    path = moments_path(ckpt_path, **settings)
    cached = path.is_file()
    gamma = cached_eps_moments(process, net, ckpt_path, lambda: training_rows(recipe), progress=progress, **settings)
    what = "read from" if cached else f"estimated on {settings['num_samples']} training samples x {process.T} steps, cached in"
    print(f"analytic: eps moments {what} {path}")
    return gamma
