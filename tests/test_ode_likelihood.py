"""The probability-flow ODE likelihood (udm.metrics.ode_likelihood) on Gaussian data, where the exact model and
log p(x0) have closed forms: against log N(x0; mu, Sigma) for flow, EDM and VP schedules, Hutchinson against the
exact divergence, against DDPM's discrete bound, and the refusals."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from udm.errors import UdmError
from udm.metrics.base import Context
from udm.metrics.likelihood import bits_per_dim
from udm.metrics.ode_bpd import OdeBitsPerDim
from udm.metrics.ode_likelihood import ode_bits_per_dim, ode_log_likelihood
from udm.processes import Affine, Blur, Gaussian, TokenMask
from udm.processes.schedules import CosineVP, Flow, edm, vp_linear

from .test_eval import _one_thread  # noqa: F401 (autouse: one torch thread, as test_eval and test_fluency)


class GaussianData:
    """Data x0 ~ N(mu, Sigma), Sigma = Q diag(lam) Q^T, and its exact denoiser as a net predicting x0 (processes
    built with parametrization='x0', scale_input=False):
    D(x_t) = E[x0 | x_t] = mu + a Sigma (a^2 Sigma + b^2 I)^{-1} (x_t - a mu)."""

    def __init__(self, process, dim, std=0.5, mean_scale=0.1, full=False, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.process = process
        self.mu = mean_scale * torch.randn(dim, generator=g, dtype=torch.float64)
        if full:  # a rotated covariance, variances from 0.05 to 0.5
            self.Q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
            self.lam = torch.linspace(0.05, 0.5, dim, dtype=torch.float64)
        else:
            self.Q, self.lam = torch.eye(dim, dtype=torch.float64), torch.full((dim,), std**2, dtype=torch.float64)

    def sample(self, n, seed=1):
        z = torch.randn(n, len(self.mu), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return self.mu + (z * self.lam.sqrt()) @ self.Q.T

    def log_density(self, x):
        y = (x.flatten(1).double() - self.mu) @ self.Q
        return (-0.5 * y**2 / self.lam - 0.5 * torch.log(2 * math.pi * self.lam)).sum(1)

    def __call__(self, x_t, t):
        a, b = (c[:, None].to(x_t.dtype) for c in self.process.coefficients(t))
        flat = x_t.flatten(1)
        gain = a * self.lam / (a**2 * self.lam + b**2)
        return (self.mu + ((flat - a * self.mu) @ self.Q * gain) @ self.Q.T).reshape(x_t.shape)


SCHEDULES = {"flow": Flow, "edm": edm, "vp-linear": lambda: vp_linear(1000), "vp-cosine": CosineVP}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_ode_likelihood_of_the_exact_model_is_the_data_density(name):
    """Isotropic Gaussian data (as images [B, 1, 4, 4]) with the closed-form denoiser: log p(x0) by the ODE equals
    log N(x0; mu, s^2 I) to 1e-3 relative for every sample, with the process's own prior at u = 1. Measured max
    relative errors at rtol = atol = 1e-6 (1e-5): flow 9.0e-6 (2.3e-4), EDM 6.0e-4 (5.9e-4; the prior N(0, 80^2)
    leaves out a(1) mu = mu: with p_1 itself it is 4.8e-5), vp-linear 6.6e-4 (5.5e-4; the table's kinks, and
    a(1) = 0.006), vp-cosine 2.4e-6 (5.4e-4); log p is about -13.2 nats."""
    process = Affine(SCHEDULES[name](), 1000, parametrization="x0", scale_input=False)
    data = GaussianData(process, 16)
    x0 = data.sample(6).reshape(6, 1, 4, 4)
    solve = ode_log_likelihood(process, data, x0, divergence="exact", rtol=1e-6, atol=1e-6)
    reference = data.log_density(x0)
    relative = ((solve.log_p - reference) / reference).abs()
    assert relative.max() < 1e-3, (name, relative.max().item(), solve.nfe)
    assert solve.u_end == 1.0 and solve.x1.shape == x0.shape
    assert solve.prior_std == (1.0 if name.startswith("vp") else float(process.b[process.T]))


def test_default_tolerances_on_a_correlated_gaussian():
    """A rotated covariance (the Jacobian is not diagonal) at the default tolerances (1e-5): flow with the x0 net
    (an eps net on flow, whose x0_hat divides by a(1) = 0, is refused when the process is built)."""
    process = Affine(Flow(), 1000, parametrization="x0", scale_input=False)
    data = GaussianData(process, 8, full=True)
    x0 = data.sample(8)
    reference = data.log_density(x0)
    exact = ode_log_likelihood(process, data, x0, divergence="exact")
    assert ((exact.log_p - reference) / reference).abs().max() < 1e-3

    with pytest.raises(UdmError, match="parametrization='eps' .* undefined where a = 0.0e\\+00 at t = T on the flow schedule"):
        Affine(Flow(), 1000, parametrization="eps", scale_input=False)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinsons_estimate_is_unbiased(probe):
    """One x0 repeated 400 times, each copy with its own fixed probe: the mean of Hutchinson's log p is within 4
    standard errors of the exact divergence's, and the estimate is noisy (a rotated covariance; with a diagonal
    Jacobian Rademacher probes would be exact)."""
    process = Affine(Flow(), 1000, parametrization="x0", scale_input=False)
    data = GaussianData(process, 8, full=True)
    x0 = data.sample(1)
    exact = ode_log_likelihood(process, data, x0, divergence="exact", rtol=1e-6, atol=1e-6).log_p[0]
    many = ode_log_likelihood(process, data, x0.expand(400, -1), divergence="hutchinson", probe=probe,
                              rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(3)).log_p
    sem = many.std() / len(many) ** 0.5
    assert many.std() > 0.05, many.std()
    assert (many.mean() - exact).abs() < 4 * sem, (many.mean().item(), exact.item(), sem.item())


def test_against_ddpms_discrete_bound():
    """8-bit quantized Gaussian data (s = 0.3) on DDPM's linear VP schedule with the exact denoiser (x0-predicting,
    unclipped). The ODE at the bin centres matches the closed form log N(x0) + log(127.5) per dim; dequantized it is
    an upper bound on the discrete NLL, which DDPM's bound (sigma_t^2 = beta_t) must not undercut. The bound draws
    one x_t per step; averaged over 16 draws per sample it is measured (64 samples, d = 16) at 7.4417 bits/dim
    against the ODE's 7.3168 (the closed form at the bin centres 7.3167, matched to 8.5e-5 relative): a gap of
    0.125 +- 0.015 bits/dim, 1.7% (one draw: +0.004 +- 0.05, too noisy to test)."""
    process = Gaussian(1000, "linear", parametrization="x0", clip_denoised=False)
    data = GaussianData(process, 16, std=0.3, mean_scale=0.05)
    x = data.sample(64).clamp(-1, 1)
    x0 = ((x + 1) * 127.5).round() / 127.5 - 1
    centres = ode_bits_per_dim(process, data, x0, dequantize=False, divergence="exact")
    closed = (-data.log_density(x0) / 16 + math.log(127.5)) / math.log(2)
    assert ((centres - closed) / closed).abs().max() < 1e-3
    ode = ode_bits_per_dim(process, data, x0, generator=torch.Generator().manual_seed(2), divergence="exact")
    draws = torch.Generator().manual_seed(1)
    bound = torch.stack([bits_per_dim(process, data, x0, generator=draws, variance="beta") for _ in range(16)]).mean(0)
    gap = bound - ode
    assert gap.mean() > 3 * gap.std() / len(gap) ** 0.5, (gap.mean().item(), gap.std().item())  # bound > NLL
    assert gap.mean() / ode.mean() < 0.025, (bound.mean().item(), ode.mean().item())


def test_the_metric_scores_held_out_images():
    """OdeBitsPerDim.compute on 12 quantized 'images' (17 levels, as scikit-learn's digits) of a flow process with
    the exact model: close to the closed form at the bin centres plus log2(8) (dequantization moves it a little)."""
    process = Affine(Flow(), 1000, parametrization="x0", scale_input=False)
    data = GaussianData(process, 16, std=0.3, mean_scale=0.05)
    x0 = ((data.sample(12).clamp(-1, 1) + 1) * 8).round() / 8 - 1
    model = SimpleNamespace(process=process, net=data, device="cpu", modality="image")
    context = Context(cfg=OmegaConf.create({"n": 4, "seed": 0, "batch_size": 5, "progress": False}),
                      data=SimpleNamespace(test=x0.reshape(12, 1, 4, 4).float()))
    metric = OdeBitsPerDim(num_samples=12, divergence="exact", dequantize=False)
    assert metric.why_not(model, context) is None
    result = metric.compute(model, torch.zeros(1), context)
    closed = float((-data.log_density(x0) / 16 + math.log(8)).mean() / math.log(2))
    assert result["ode_bpd_levels"] == 17 and result["ode_bpd_images"] == 12 and result["ode_bpd_nfe"] > 10
    assert result["ode_bpd"] == pytest.approx(closed, rel=1e-3)  # the net sees float32 images
    off = OdeBitsPerDim(num_samples=0)
    assert "ode_bpd_samples=0 turns the ODE bits/dim off" in off.why_not(model, context)


def test_processes_without_real_valued_time_are_refused():
    with pytest.raises(UdmError, match=r"probability-flow ODE likelihood needs real-valued times .*Blur\(T=10"):
        ode_log_likelihood(Blur(T=10), lambda x, t: x, torch.zeros(2, 1, 4, 4))
    tokens = TokenMask(length=4, vocab_size=5, special_ids=[4], mask_id=4)
    model = SimpleNamespace(process=tokens, modality="text")
    reason = OdeBitsPerDim(num_samples=4).why_not(model, None)
    assert "bits/dim by the probability-flow ODE (ode_bpd) needs real-valued times" in reason and "TokenMask(" in reason


def test_the_metric_is_registered_for_udm_eval():
    from hydra import compose, initialize_config_dir

    from udm.cli import CONF_DIR
    from udm.metrics.base import load_metrics

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["ckpt=x", "ode_bpd_samples=8", "+metric.ode_bpd.divergence=exact"])
    metric, = load_metrics(cfg, ["ode_bpd"])
    assert isinstance(metric, OdeBitsPerDim) and metric.num_samples == 8 and metric.divergence == "exact"
    assert metric.rtol == metric.atol == 1e-5 and metric.u_eps == 1e-5 and metric.name == "ode_bpd"
