"""Score-based sampling: with the exact score of a 1-D Gaussian mixture plugged in as the model,
annealed Langevin and predictor-corrector sampling reproduce the mixture's mean and variance."""

import math

import pytest
import torch

from udm.errors import UdmError
from udm.processes import Gaussian, VarianceExploding
from udm.samplers import DDIM, AnnealedLangevin, PredictorCorrector

W = torch.tensor([0.3, 0.7], dtype=torch.float64)
MU = torch.tensor([-2.0, 2.0], dtype=torch.float64)
S = torch.tensor([0.5, 0.5], dtype=torch.float64)
MEAN = float((W * MU).sum())  # 0.8
VAR = float((W * (S**2 + MU**2)).sum()) - MEAN**2  # 3.61
N = 20000


def mixture_score(x, scale, extra_var):
    """grad log of sum_k w_k N(scale mu_k, scale^2 s_k^2 + extra_var) at x [N, 1]."""
    var = scale**2 * S**2 + extra_var
    logp = torch.log(W) - 0.5 * torch.log(2 * math.pi * var) - 0.5 * (x - scale * MU) ** 2 / var
    return (torch.softmax(logp, -1) * (-(x - scale * MU) / var)).sum(-1, keepdim=True)


def exact_eps(process):
    """The model(x_t, t) an ideal eps-network is: -noise_scale_t * score_t."""

    def model(x, t):
        if isinstance(process, VarianceExploding):
            sigma = process.sigma[t].view(-1, 1)
            return -sigma * mixture_score(x, 1.0, sigma**2)
        a, b = process.a[t].view(-1, 1), process.b[t].view(-1, 1)
        return -b * mixture_score(x, a, b**2)

    return model


def check(x):
    assert abs(float(x.mean()) - MEAN) < 0.06  # ~4 standard errors at N = 20000
    assert float(x.var()) == pytest.approx(VAR, rel=0.05)
    assert float((x > 0).double().mean()) == pytest.approx(0.7, abs=0.02)  # the modes' weights


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def test_exact_score_model_is_consistent():
    p = VarianceExploding(T=10)
    x = torch.randn(5, 1, dtype=torch.float64)
    t = torch.full((5,), 3)
    out = exact_eps(p)(x, t)
    torch.testing.assert_close(p.score(out, x, t), mixture_score(x, 1.0, p.sigma[3] ** 2))


def test_annealed_langevin_on_ve(g):
    p = VarianceExploding(T=100, sigma_min=0.01, sigma_max=10.0)
    x_T = p.prior(torch.zeros(N, 1, dtype=torch.float64), g)
    check(AnnealedLangevin(steps_per_level=10, step_lr=2e-5)(p, exact_eps(p), x_T, generator=g))


def test_annealed_langevin_on_vp(g):
    p = Gaussian(T=1000, clip_denoised=False)
    x_T = torch.randn(N, 1, dtype=torch.float64, generator=g)
    check(AnnealedLangevin(steps=100, steps_per_level=20, step_lr=1e-3)(p, exact_eps(p), x_T, generator=g))


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_predictor_corrector(kind, g):
    p = VarianceExploding(T=100) if kind == "ve" else Gaussian(T=1000, clip_denoised=False)
    x_T = p.prior(torch.zeros(N, 1, dtype=torch.float64), g)
    check(PredictorCorrector(steps=100, eta=1.0, corrector_steps=1, snr=0.16)(p, exact_eps(p), x_T, generator=g))


def test_ve_oracle_ddim_recovers_x0_and_forward_matches_closed_form(g):
    p = VarianceExploding(T=50, sigma_min=0.02, sigma_max=5.0).double()
    x0 = torch.rand(4, 3, dtype=torch.float64, generator=g) * 2 - 1
    eps = torch.randn(4, 3, dtype=torch.float64, generator=g)
    t = torch.full((4,), 20)
    x_t = p(x0, t, eps)
    torch.testing.assert_close(x_t, x0 + p.sigma[20] * eps)
    torch.testing.assert_close(p.inverse(x0, x_t, t), eps)
    assert float(p.sigma[1]) == pytest.approx(0.02) and float(p.sigma[50]) == pytest.approx(5.0)
    out = DDIM(steps=None, eta=0.0)(p, lambda x, t: p.inverse(x0, x, t), torch.randn(4, 3, dtype=torch.float64, generator=g) * 5)
    torch.testing.assert_close(out, x0)


def test_langevin_needs_a_score():
    from udm.processes import Blur

    p = Blur(T=5)
    with pytest.raises(UdmError, match=r"annealed Langevin dynamics .*needs a score.*which Blur\(T=5, sigma=0.0\) does not have"):
        AnnealedLangevin()(p, lambda x, t: x, torch.zeros(1, 1, 8, 8))
    with pytest.raises(UdmError, match=r"the Langevin corrector needs a score.*which Blur\(T=5, sigma=0.0\) does not have"):
        PredictorCorrector(eta=0.0, corrector_steps=1)(p, lambda x, t: x, torch.zeros(1, 1, 8, 8))


@pytest.mark.slow  # ~20 s of training; the VE process and its samplers are tested in-process above (default suite < 10 min)
def test_toy_smld_trains_and_samples_through_the_console_scripts(tmp_path):
    from .conftest import run_cli

    run = tmp_path / "run"
    run_cli("udm-train", "experiment=toy_smld", "trainer.max_steps=40", "trainer.val_check_interval=20",
            "final_samples=200", f"hydra.run.dir={run}", cwd=tmp_path)
    assert (run / "samples.png").is_file() and (run / "samples" / "step000020.png").is_file()
    for sampler in ("langevin", "pc", "ddpm"):
        proc = run_cli("udm-sample", f"ckpt={run}", "n=300", f"sampler={sampler}", "sampler.steps=20", cwd=tmp_path)
        tensor = next(line.split(" written to ")[-1] for line in proc.stdout.splitlines() if "tensor" in line)
        x = torch.load(tensor, weights_only=True)
        assert x.shape == (300, 2) and torch.isfinite(x).all()
