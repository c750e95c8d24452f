"""Progressive distillation's objective, written once over x0_hat: its target against closed forms with an exact
teacher, and one optimizer step lowering it for a Gaussian and a cold process."""

import copy

import pytest
import torch
from torch import nn

from udm.distill import inverse_step, progressive_loss, teacher_target
from udm.errors import UdmError
from udm.processes import Affine, Blur
from udm.processes.capabilities import Capabilities
from udm.processes.schedules import Flow, vp_linear
from udm.samplers import DDIM, Explicit

from .test_affine import exact_denoiser


@pytest.mark.parametrize("schedule", [vp_linear(1000), Flow()])
def test_with_an_exact_teacher_the_target_is_the_teachers_two_steps(schedule):
    """x0* = x0_reaching(x_t, t, x_s*, s) makes the student's one step land exactly on the teacher's two-step x_s*,
    and a student predicting x0* has zero loss; the two steps are DDIM's own on the teacher's grid."""
    process = Affine(schedule, T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(16, 8, generator=g, dtype=torch.float64)
    for t_int, m_int, s_int in ((900, 700, 500), (300, 150, 0)):
        t, m, s = (torch.full((16,), v) for v in (t_int, m_int, s_int))
        target = teacher_target(process, teacher, x_t, t, m, s)
        ddim = DDIM(steps=None)
        ddim.grid = Explicit([t_int, m_int] + ([s_int] if s_int else []))
        states = []
        ddim(process, teacher, x_t, callback=lambda step: states.append(step.x_s))
        torch.testing.assert_close(target, states[1], rtol=0, atol=1e-12)  # two of DDIM's steps
        x0_star = process.x0_reaching(x_t, t, target, s)
        student = lambda x, tt: x0_star  # noqa: E731 - the ideal student at (x_t, t)
        torch.testing.assert_close(inverse_step(process, student, x_t, t, s), target, rtol=0, atol=1e-12)


def test_a_student_that_predicts_the_target_has_zero_loss():
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    grid = [1000, 750, 500, 250]

    def ideal(x_t, t):  # the student's best answer: the x0 reaching the teacher's two steps from (x_t, t)
        i = torch.tensor([grid.index(int(v)) for v in t])
        times = torch.tensor(grid + [0])
        m, s = times[i + 1], times[i + 2]
        return process.x0_reaching(x_t, t, teacher_target(process, teacher, x_t, t, m, s), s)

    x0 = 0.3 + 0.5 * torch.randn(32, 8, dtype=torch.float64)
    loss = progressive_loss(process, ideal, teacher, x0, grid, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-20
    assert float(progressive_loss(process, teacher, teacher, x0, grid, torch.Generator().manual_seed(1))) > 1e-6


class Tiny(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d + 1, 64), nn.SiLU(), nn.Linear(64, d))

    def forward(self, x, t):
        flat = x.flatten(1)
        return self.layers(torch.cat([flat, t.float()[:, None] / 1000], 1)).reshape(x.shape)


@pytest.mark.parametrize("name", ["vp", "flow", "blur"])
def test_one_distillation_step_lowers_the_students_loss_on_a_fixed_batch(name):
    torch.manual_seed(0)
    process = {"vp": lambda: Affine(vp_linear(1000), T=1000, parametrization="eps"),
               "flow": lambda: Affine(Flow(), T=1000, parametrization="velocity"),
               "blur": lambda: Blur(T=20)}[name]()
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    teacher = Tiny(64)
    student = copy.deepcopy(teacher)
    grid = [1000, 750, 500, 250] if name != "blur" else [20, 15, 10, 5]
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-2)

    def loss():
        return progressive_loss(process, student, teacher, x0, grid, torch.Generator().manual_seed(3))

    before = loss()
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert float(loss()) < float(before)


class NoInverse(Blur):
    """A cold process that declares no inverse (as a user's corruption without one would)."""

    capabilities = Capabilities(invertible=False)


def test_distillation_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="even number"):
        progressive_loss(Affine(Flow(), T=10, parametrization="x0"), Tiny(4), Tiny(4), torch.zeros(2, 4), [10, 5, 2])
    with pytest.raises(UdmError, match="progressive distillation .*needs an inverse.*NoInverse"):
        progressive_loss(NoInverse(T=4), Tiny(64), Tiny(64), torch.zeros(2, 1, 8, 8), [4, 2])
