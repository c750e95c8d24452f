"""Cold processes: D_t's schedule, oracle recovery, and the improved sampler's error property."""

import pytest
import torch

from udm.errors import UdmError
from udm.processes import Blur, Inpaint, Pixelate
from udm.samplers import DDIM, DDPM, Improved, Naive

S = 16


def processes():
    return {
        "blur": Blur(T=20, std_max=S),
        "inpaint-centre": Inpaint(T=20, image_size=S),
        "inpaint-random": Inpaint(T=20, image_size=S, order="random"),
        "pixelate": Pixelate(T=10, image_size=S),
        "pixelate-long": Pixelate(T=40, image_size=S),
    }


@pytest.fixture
def x0():
    return torch.rand(4, 2, S, S, dtype=torch.float64) * 2 - 1


def full(t, n=4):
    return torch.full((n,), t, dtype=torch.long)


@pytest.mark.parametrize("name", list(processes()))
def test_D0_is_identity_and_DT_is_uninformative(name, x0):
    p = processes()[name]
    torch.testing.assert_close(p.degrade(x0, full(0)), x0, rtol=0, atol=1e-12)
    xT = p.degrade(x0, full(p.T))
    if name in ("blur", "pixelate", "pixelate-long"):  # the per-channel mean
        torch.testing.assert_close(xT, x0.mean((-2, -1), keepdim=True).expand_as(x0), rtol=0, atol=2e-3)
    else:  # everything masked
        assert torch.all(xT == p.fill)


def test_blur_is_linear_and_keeps_constants(x0):
    p = Blur(T=20, std_max=S)
    t = torch.tensor([3, 7, 12, 20])
    torch.testing.assert_close(p.degrade(2 * x0 + 0.5 * x0.flip(0), t), 2 * p.degrade(x0, t) + 0.5 * p.degrade(x0.flip(0), t))
    const = torch.full_like(x0, 0.3)
    torch.testing.assert_close(p.degrade(const, t), const, rtol=0, atol=1e-12)


def test_inpaint_mask_grows_and_centre_starts_in_the_middle():
    p = Inpaint(T=20, image_size=S)
    masks = [p.mask(full(t, 1))[0, 0] for t in range(21)]
    assert all((a <= b).all() for a, b in zip(masks, masks[1:]))  # nested
    assert [int(m.sum()) for m in masks] == [round(t / 20 * S * S) for t in range(21)]
    assert masks[1][S // 2, S // 2] and not masks[1][0, 0]


@pytest.mark.parametrize("name", list(processes()))
@pytest.mark.parametrize("sampler", [Naive, Improved], ids=["baseline", "inverse"])
def test_oracle_recovers_x0_exactly(name, sampler, x0):
    p = processes()[name]
    x_T = p(x0, full(p.T), p.sample_noise(x0))
    out = sampler(steps=None)(p, lambda xt, t: x0, x_T)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(processes()))
def test_improved_sampling_does_not_accumulate_error_but_naive_does(name):
    # a predictor that knows x0 but is off by a constant c and by whatever x_t has drifted
    # from the true path D_t(x0): naive sampling feeds its errors back, improved cancels them
    p, c = processes()[name], 0.01
    x0 = torch.rand(4, 2, S, S, dtype=torch.float64) * 1.6 - 0.8

    def model(xt, t):
        return x0 + c + (xt - p.degrade(x0, t))

    x_T = p.degrade(x0, full(p.T))
    improved = (Improved(steps=None)(p, model, x_T) - x0).abs().max().item()
    naive = (Naive(steps=None)(p, model, x_T) - x0).abs().max().item()
    assert improved <= c + 1e-9
    assert naive > 3 * c


def test_mixed_step_with_sigma_and_oracle(x0):
    p = Blur(T=20, std_max=S, sigma=0.05)
    # sigma > 0: Gaussian noise e, so the mixed step with fresh noise applies (what method='auto' picked)
    assert p.capabilities.gaussian_noise and p.capabilities.invertible
    DDIM(steps=None, eta=0.5).check(p)
    g = torch.Generator().manual_seed(0)
    x_T = p(x0, full(p.T), p.sample_noise(x0, g))
    # eta = 0: the inverse step, which carries the start's noise e through to x_0 unchanged
    out = DDIM(steps=None, eta=0.0)(p, lambda xt, t: x0, x_T)
    torch.testing.assert_close(out - x0, x_T - p.degrade(x0, full(p.T)), rtol=0, atol=1e-9)
    # sigma = 0 has no Gaussian noise to draw: fresh noise in the mixed step is refused, naming the process
    with pytest.raises(UdmError, match=r"eta=1.0 .*needs Gaussian noise.*which Blur\(T=20, sigma=0.0\) does not have"):
        DDPM()(Blur(T=20, std_max=S), lambda xt, t: x0, x_T)


def test_prior_is_degraded_data_plus_noise(x0):
    p = Blur(T=20, std_max=S, prior_noise=0.1)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    a, b = p.prior(x0, g1), p.prior(x0, g2)
    assert not torch.equal(a, b)
    mean = x0.mean((-2, -1), keepdim=True)
    assert (a - mean).std().item() == pytest.approx(0.1, rel=0.15)


def test_pixelate_matrices_are_average_pooling_and_nearest_upsampling(x0):
    import torch.nn.functional as F

    p = Pixelate(T=10, image_size=S)
    for side in (1, 3, 5, 8, S):
        M = p.pool_matrix(side)
        expected = F.interpolate(F.adaptive_avg_pool2d(x0, side), size=(S, S), mode="nearest")
        torch.testing.assert_close(M @ x0 @ M.T, expected, rtol=0, atol=1e-12)
    # every step degrades further: each D_t differs from D_{t-1}
    outs = [p.degrade(x0, full(t)) for t in range(11)]
    assert all(not torch.allclose(a, b) for a, b in zip(outs, outs[1:]))
