"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance from Gamma_t = E ||eps_theta(x_t, t)||^2 / d.

Gamma_t (b_t^2 times the mean squared score, per dimension) is estimated once per model by
Monte Carlo over the training data and cached beside the checkpoint as
`analytic-<key>.pt`; `Gaussian.analytic_variance` turns it into sigma*^2 and
`variance='analytic'` steps with it. `prepare_sampler` is what udm-sample (and any other
job) calls to get a sampler ready, moments attached when it needs them.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import track
from torch import Tensor

from udm import sampling
from udm.errors import UdmError
from udm.processes import Gaussian
from udm.sampling import Model, make_timesteps

MOMENT_DEFAULTS = {"num_samples": 100, "batch_size": 500, "seed": 0}
PIXEL_LEVEL = 2 / 255  # one step of 8-bit pixels in [-1, 1]


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
    if not isinstance(process, Gaussian):
        raise UdmError(f"Analytic-DPM's moments are defined for Gaussian (VP) processes; got {process.describe()}")
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
        eps = process.eps_hat(model(x_t, t), x_t, t)
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


def needs_moments(sampler_cfg: DictConfig) -> bool:
    return sampler_cfg.get("_target_") == f"{__name__}.sample" or sampler_cfg.get("variance") == "analytic"


def attach_eps_moments(
    process: Gaussian,
    net: Model,
    ckpt_path: str | Path,
    recipe: dict[str, Any],
    progress: bool = False,
    **settings: int,
) -> None:
    """Give `process` the Gamma_t of the checkpoint's net (process.set_eps_moments): read from the
    cache beside the checkpoint, or estimated on the checkpoint's training data and cached.

    `settings` are num_samples, batch_size and seed (MOMENT_DEFAULTS for those left out); the
    process and the net must already be on the device to estimate on.
    """
    if not isinstance(process, Gaussian):
        raise UdmError(f"Analytic-DPM's variance needs a Gaussian (VP) process; this checkpoint's is {process.describe()}")
    unknown = set(settings) - set(MOMENT_DEFAULTS)
    if unknown:
        raise UdmError(f"unknown eps-moment settings {sorted(unknown)}; choose from {sorted(MOMENT_DEFAULTS)}")
    settings = {**MOMENT_DEFAULTS, **settings}
    path = moments_path(ckpt_path, **settings)
    cached = path.is_file()
    gamma = cached_eps_moments(process, net, ckpt_path, lambda: training_rows(recipe), progress=progress, **settings)
    process.set_eps_moments(gamma)
    what = "read from" if cached else f"estimated on {settings['num_samples']} training samples x {process.T} steps, cached in"
    print(f"analytic: eps moments {what} {path}")


def prepare_sampler(
    sampler_cfg: DictConfig | dict[str, Any],
    process: Gaussian,
    net: Model,
    ckpt_path: str | Path,
    recipe: dict[str, Any],
    progress: bool = False,
) -> Callable[..., Tensor]:
    """The sampler of a `_partial_` sampler config, ready to call as sampler(process, net, x_T, ...).

    When it steps with variance='analytic' (sampler=analytic_ddpm / analytic_ddim), the moments
    are attached first (`attach_eps_moments`, settings from the config's `moments`).
    """
    cfg = sampler_cfg if isinstance(sampler_cfg, DictConfig) else OmegaConf.create(sampler_cfg)
    sampler = instantiate(cfg)
    if needs_moments(cfg):
        settings = OmegaConf.to_container(cfg.moments, resolve=True) if cfg.get("moments") else {}
        attach_eps_moments(process, net, ckpt_path, recipe, progress, **settings)
    return sampler


@torch.no_grad()
def sample(
    process: Gaussian,
    model: Model,
    x_T: Tensor,
    timesteps: Sequence[int] | None = None,
    steps: int | None = None,
    eta: float = 0.0,
    clip_pixels: float = 2.0,
    moments: dict[str, Any] | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    t_start: int | None = None,
) -> Tensor:
    """Analytic-DPM sampling: the one reverse loop with variance='analytic'; eta = 1 is
    Analytic-DDPM (lambda^2 = beta~), eta = 0 Analytic-DDIM (lambda^2 = 0).

    As in the paper's code, sigma of the step into the last noisy time t_n (the step before the
    deterministic t_n -> 0) is clipped so that E|sigma z| = sigma sqrt(2 / pi) <= clip_pixels
    8-bit pixel levels (2/255 each); clip_pixels=0 turns the clip off. `moments` holds the
    settings of the Gamma_t estimate, which `prepare_sampler` reads; the process must carry
    the moments already (process.set_eps_moments).
    """
    if getattr(process, "eps_moments", None) is None:
        raise UdmError(
            "Analytic-DPM sampling needs the eps moments of the model on the process (process.set_eps_moments): "
            "udm-sample estimates them from a checkpoint's training data; samples during training need another sampler"
        )
    ts = make_timesteps(process.T, timesteps, steps, t_start)
    saved = process.sigma_cap
    process.sigma_cap = (ts[-1], clip_pixels * PIXEL_LEVEL * math.sqrt(math.pi / 2)) if clip_pixels > 0 else None
    try:
        return sampling.sample(process, model, x_T, timesteps=ts, eta=eta, variance="analytic", method="mixed",
                               generator=generator, progress=progress)
    finally:
        process.sigma_cap = saved
