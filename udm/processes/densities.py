"""Training densities of the time u in (0, 1] and the loss weights of the affine Gaussian process.

Densities (what t is drawn from when training; flat config on the process):

    uniform        u ~ U(0, 1]                                       (DDPM's t ~ U{1..T} on discrete schedules)
    logit_normal   u = sigmoid(m + s n), n ~ N(0, 1)                 (rectified-flow models, Esser et al. 2024)
    log_normal     sigma = b/a = exp(m + s n), u = time_of(-2 log sigma)   (EDM: P_mean = -1.2, P_std = 1.2)

Each is the image of a quantile q in (0, 1) under its inverse CDF, so the batch's quantiles may be drawn
i.i.d., stratified (one per 1/B slice, Kingma et al. 2021) or antithetic (q and 1 - q), which lowers the
variance of the loss over t without changing its mean.

Weights (on the squared error of x0, converted to the parametrization the net predicts):

    none       the plain mean-squared error of what the net predicts (DDPM's simple loss for eps)
    min_snr    min(SNR, gamma) (Hang et al. 2023)
    edm        (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Karras et al. 2022)
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError

DENSITIES = ("uniform", "logit_normal", "log_normal")
SAMPLINGS = ("iid", "stratified", "antithetic")
WEIGHTS = ("none", "min_snr", "edm")


def check_density(density: str, sampling: str, weight: str, snr_gamma: float, mean: float = 0.0, std: float = 1.0) -> None:
    for value, known, what in ((density, DENSITIES, "time_density"), (sampling, SAMPLINGS, "t_sampling"),
                               (weight, WEIGHTS, "loss_weight")):
        if value not in known:
            raise UdmError(f"{what}={value!r} is not one of {list(known)}")
    if weight == "min_snr" and not snr_gamma > 0:
        raise UdmError(f"min-SNR weighting needs snr_gamma > 0, got {snr_gamma}")
    if density == "uniform" and (mean, std) != (0.0, 1.0):
        raise UdmError(f"density_mean={mean} and density_std={std} shape the logit_normal and log_normal densities; "
                       "time_density=uniform has neither (set them to 0 and 1)")
    if density != "uniform" and not std > 0:
        raise UdmError(f"density_std must be > 0, got {std}")


def quantiles(n: int, sampling: str, device, generator: torch.Generator | None = None) -> Tensor:
    """n quantiles in (0, 1), float64: i.i.d., stratified (the i-th in [i/n, (i+1)/n), shuffled) or antithetic."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if sampling == "stratified":
        order = torch.randperm(n, generator=generator, device=device)
        u = (order + u) / n
    elif sampling == "antithetic":
        half = u[: (n + 1) // 2]
        u = torch.cat([half, 1 - half])[:n]
    return u.clamp(1e-12, 1 - 1e-12)


def times(q: Tensor, density: str, schedule, mean: float, std: float) -> Tensor:
    """The times u in (0, 1] at quantiles q of the density."""
    if density == "uniform":
        return 1 - q  # (0, 1]: never the data itself
    n = torch.special.ndtri(q)
    if density == "logit_normal":
        return torch.sigmoid(mean + std * n)
    log_sigma = mean + std * n  # log_normal: on sigma = b / a
    return schedule.time_of(-2 * log_sigma).clamp(min=1e-12)


def x0_weight(weight: str, snr: Tensor, sigma_data: float, snr_gamma: float) -> Tensor:
    """The weight on ||x0_hat - x0||^2 at signal-to-noise ratio snr = a^2 / b^2."""
    if weight == "min_snr":
        return snr.clamp(max=snr_gamma)
    return 1 / sigma_data**2 + snr  # edm: (sigma^2 + sd^2) / (sigma sd)^2 with sigma^2 = 1 / snr, finite at snr = 0
