"""The condition in the core API: model(x_t, t, cond) through training and every sampler; None changes nothing."""

import pytest
import torch
from torch import nn

from udm.errors import UdmError
from udm.fast import FastNet
from udm.lit import DiffusionModule, split_batch
from udm.nets import UNet
from udm.processes import Blur, Gaussian, TokenMask, VarianceExploding
from udm.samplers import DDIM, DDPM, AnnealedLangevin, DPMSolver, Improved, PredictorCorrector


class Recorder(nn.Module):
    """A conditional eps/x0/logit predictor that records the condition of every call (an oracle of a fixed x0)."""

    def __init__(self, process, x0):
        super().__init__()
        self.process, self.x0, self.conds = process, x0, []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond=None):
        self.conds.append(cond)
        if isinstance(self.process, TokenMask):
            return torch.nn.functional.one_hot(self.x0, self.process.vocab_size).float() * 30
        if isinstance(self.process, Blur):
            return self.x0 + self.w
        return self.process.inverse(self.x0, x_t, t) + self.w


@pytest.mark.parametrize("make_sampler, process", [
    (lambda: DDIM(steps=5), Gaussian(T=50)),
    (lambda: DDPM(steps=7), Gaussian(T=50)),
    (lambda: DPMSolver(steps=6), Gaussian(T=50)),
    (lambda: PredictorCorrector(steps=4), VarianceExploding(T=20)),
    (lambda: AnnealedLangevin(steps=3, steps_per_level=2), VarianceExploding(T=20)),
    (lambda: Improved(), Blur(T=6, std_max=4.0)),
    (lambda: Improved(steps=3), TokenMask(length=6, vocab_size=9, mask_id=8)),
])
def test_every_sampler_hands_the_condition_to_every_call(make_sampler, process):
    x0 = torch.randint(0, 8, (2, 6)) if isinstance(process, TokenMask) else torch.rand(2, 1, 8, 8) - 0.5
    net, cond = Recorder(process, x0), torch.tensor([3, 1])
    t = torch.full((2,), process.T, dtype=torch.long)
    x_T = process(x0, t, process.sample_noise(x0, torch.Generator().manual_seed(0)))
    out = make_sampler()(process, net, x_T, generator=torch.Generator().manual_seed(1), cond=cond)
    assert net.conds and all(c is cond for c in net.conds), "a call went out without the condition"
    # the condition is plumbed, not used: the oracle's x0 comes back as without it
    net.conds.clear()
    plain = make_sampler()(process, net, x_T, generator=torch.Generator().manual_seed(1))
    assert all(c is None for c in net.conds) and torch.equal(out, plain)


def test_training_passes_the_condition_and_bare_batches_stay_unconditional():
    process = Gaussian(T=20)
    x0, cond = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    net = Recorder(process, x0)
    module = DiffusionModule(process, net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    module.log = lambda *a, **k: None
    module.training_step((x0, cond), 0)
    module.training_step(x0, 0)
    assert net.conds[0] is cond and net.conds[1] is None
    assert split_batch([x0, cond])[1] is cond
    with pytest.raises(ValueError, match="a batch is x0 or"):
        split_batch((x0, cond, cond))


def test_an_unconditional_net_refuses_a_condition_instead_of_ignoring_it():
    net = UNet(image_size=8, in_channels=1, channels=8, channel_mult=[1], attention_resolutions=[], num_res_blocks=1, groups=4)
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([3, 4])
    net(x, t)  # unconditional use is unchanged
    with pytest.raises(UdmError, match="UNet is an unconditional net"):
        net(x, t, torch.tensor([1, 2]))
    with pytest.raises(UdmError, match="UNet is an unconditional net"):  # the fast path forwards it too
        FastNet(net, precision="32-true", channels_last=True)(x, t, torch.tensor([1, 2]))
