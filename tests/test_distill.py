"""Distillation's objectives, written once over x0_hat: progressive distillation's target and consistency
distillation's fixed point against closed forms with an exact teacher, one optimizer step lowering each loss for
Gaussian and cold processes, and the rounds' refusals."""

import copy

import pytest
import torch
from torch import nn

from udm.distill import Consistency, Progressive, consistency_loss, inverse_step, progressive_loss, teacher_target
from udm.errors import UdmError
from udm.nets.autoencoder import ConvDecoder, ConvEncoder
from udm.processes import Affine, Blur, Latent, Pixelate, TokenMask
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
        target = teacher_target(process, teacher, x_t, [t, m, s])
        ddim = DDIM(steps=None)
        ddim.grid = Explicit([t_int, m_int] + ([s_int] if s_int else []))
        states = []
        ddim(process, teacher, x_t, callback=lambda step: states.append(step.x_s))
        torch.testing.assert_close(target, states[1], rtol=0, atol=1e-12)  # two of DDIM's steps
        x0_star = process.x0_reaching(x_t, t, target, s)
        student = lambda x, tt: x0_star  # noqa: E731 - the ideal student at (x_t, t)
        torch.testing.assert_close(inverse_step(process, student, x_t, t, s), target, rtol=0, atol=1e-12)


def test_with_factor_k_the_target_is_the_teachers_k_steps():
    """One student step for four of the teacher's: the target is DDIM's four steps, and a student predicting the x0
    that reaches it has zero loss under progressive_loss(factor=4) while the teacher itself does not."""
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(16, 8, generator=g, dtype=torch.float64)
    times = [900, 800, 650, 500, 300]
    ddim = DDIM(steps=None)
    ddim.grid = Explicit(times)
    states = []
    ddim(process, teacher, x_t, callback=lambda step: states.append(step.x_s))
    target = teacher_target(process, teacher, x_t, [torch.full((16,), v) for v in times])
    torch.testing.assert_close(target, states[3], rtol=0, atol=1e-12)

    grid = [1000, 875, 750, 625, 500, 375, 250, 125]

    def ideal(x, t):
        i = torch.tensor([grid.index(int(v)) for v in t])
        ends = torch.tensor(grid + [0])
        path = [ends[i + j] for j in range(5)]
        return process.x0_reaching(x, t, teacher_target(process, teacher, x, path), path[-1])

    x0 = 0.3 + 0.5 * torch.randn(32, 8, dtype=torch.float64)
    assert float(progressive_loss(process, ideal, teacher, x0, grid, torch.Generator().manual_seed(1), factor=4)) < 1e-20
    assert float(progressive_loss(process, teacher, teacher, x0, grid, torch.Generator().manual_seed(1), factor=4)) > 1e-6
    with pytest.raises(ValueError, match="multiple >= 4 of steps"):
        progressive_loss(process, teacher, teacher, x0, grid[:6], factor=4)


def test_a_student_that_predicts_the_target_has_zero_loss():
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    grid = [1000, 750, 500, 250]

    def ideal(x_t, t):  # the student's best answer: the x0 reaching the teacher's two steps from (x_t, t)
        i = torch.tensor([grid.index(int(v)) for v in t])
        times = torch.tensor(grid + [0])
        m, s = times[i + 1], times[i + 2]
        return process.x0_reaching(x_t, t, teacher_target(process, teacher, x_t, [t, m, s]), s)

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


PROCESSES = {"vp": lambda: Affine(vp_linear(1000), T=1000, parametrization="eps"),
             "flow": lambda: Affine(Flow(), T=1000, parametrization="velocity"),
             "blur": lambda: Blur(T=20), "pixelate": lambda: Pixelate(T=20, image_size=8),
             "latent": lambda: Latent(ConvEncoder(1, 8, 2, 1), ConvDecoder(1, 8, 2, 1, image_size=8), T=1000)}


def state_size(process, x0):
    """The size of x_t (a latent process's is its code's)."""
    return process(x0, torch.full((len(x0),), 10), process.sample_noise(x0)).flatten(1).shape[1]


@pytest.mark.parametrize("states, norm", [("forward", "l2"), ("teacher", "l2"), ("teacher", "l1"), ("forward", "l1")])
@pytest.mark.parametrize("objective", ["progressive", "consistency"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_one_distillation_step_lowers_the_students_loss_on_a_fixed_batch(name, objective, states, norm):
    """For every family, both objectives, x_t from the forward process or the teacher's sampler, either norm."""
    torch.manual_seed(0)
    process = PROCESSES[name]()
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    teacher = Tiny(state_size(process, x0))
    student, target = copy.deepcopy(teacher), copy.deepcopy(teacher)
    grid = [1000, 750, 500, 250] if process.T == 1000 else [20, 15, 10, 5]

    def loss():
        g = torch.Generator().manual_seed(3)
        if objective == "progressive":
            return progressive_loss(process, student, teacher, x0, grid, g, states=states, norm=norm)
        return consistency_loss(process, student, target, teacher, x0, grid, g, states=states, norm=norm)

    before = loss()
    # a step size from the loss: an eps-parametrised x0_hat scales errors by 1/a_t (~150 at t = T)
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-3 / (1 + float(before)))
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert float(loss()) < float(before)


class NoInverse(Blur):
    """A cold process that declares no inverse (as a user's corruption without one would)."""

    capabilities = Capabilities(invertible=False)


def test_distillation_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="multiple >= 2 of steps"):
        progressive_loss(Affine(Flow(), T=10, parametrization="x0"), Tiny(4), Tiny(4), torch.zeros(2, 4), [10, 5, 2])
    with pytest.raises(UdmError, match="progressive distillation .*needs an inverse.*NoInverse"):
        progressive_loss(NoInverse(T=4), Tiny(64), Tiny(64), torch.zeros(2, 1, 8, 8), [4, 2])
    tokens = TokenMask(mask_id=3, length=8, vocab_size=4, T=8)  # its inverse step draws tokens: no squared error
    for loss in (lambda: progressive_loss(tokens, Tiny(8), Tiny(8), torch.zeros(2, 8, dtype=torch.long), [8, 4]),
                 lambda: consistency_loss(tokens, Tiny(8), Tiny(8), Tiny(8), torch.zeros(2, 8, dtype=torch.long), [8, 4])):
        with pytest.raises(UdmError, match="needs real-valued data.*TokenMask.*not distilled"):
            loss()


def ddim_to_data(process, teacher, grid):
    """The teacher's deterministic sampler as a function: x0 reached from (x_t, t) by its inverse steps on `grid`."""

    def run(x_t, t):
        out = torch.empty_like(x_t)
        for value in t.unique().tolist():
            rows = t == value
            x = x_t[rows]
            times = [v for v in grid if v <= value] + [0]
            for a, b in zip(times, times[1:]):
                tt, ss = (torch.full((len(x),), v) for v in (a, b))
                x = inverse_step(process, teacher, x, tt, ss)
            out[rows] = x
        return out

    return run


@pytest.mark.parametrize("schedule", [vp_linear(1000), Flow()])
def test_the_consistency_objectives_fixed_point_is_the_teachers_sampler(schedule):
    """With an exact teacher on Gaussian data, a student (and EMA target) that maps every x_t on the grid to the x0
    the teacher's deterministic sampler reaches from it has zero consistency loss; the teacher itself does not."""
    process = Affine(schedule, T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    grid = [1000, 750, 500, 250]
    ideal = ddim_to_data(process, teacher, grid)
    x0 = 0.3 + 0.5 * torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert float(consistency_loss(process, ideal, ideal, teacher, x0, grid, g())) < 1e-24
    assert float(consistency_loss(process, teacher, teacher, teacher, x0, grid, g())) > 1e-6


def test_the_x0_space_loss_is_the_truncated_snr_weighted_regression_onto_x0_star():
    """space=x0: a student predicting x0* (the x0 whose one step reaches the teacher's two) has zero loss, and the
    loss of any other prediction is max(SNR_t, 1) ||x0 - x0*||^2 per sample."""
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    grid = [1000, 500]
    x0 = 0.3 + 0.5 * torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t, s = torch.full((8,), 1000), torch.full((8,), 0)

    def ideal(x_t, tt):
        return process.x0_reaching(x_t, tt, teacher_target(process, teacher, x_t, [tt, torch.full_like(tt, 500), s]), s)

    assert float(progressive_loss(process, ideal, teacher, x0, grid, torch.Generator().manual_seed(1), space="x0")) < 1e-24
    off = lambda x_t, tt: ideal(x_t, tt) + 0.1  # noqa: E731
    a, b = process.coefficients(t)
    weight = float((a[0] ** 2 / b[0] ** 2).clamp(min=1))
    loss = progressive_loss(process, off, teacher, x0, grid, torch.Generator().manual_seed(1), space="x0")
    torch.testing.assert_close(float(loss), weight * 0.01, rtol=1e-9, atol=0)
    with pytest.raises(UdmError, match="space=x0 .*affine.*Blur"):
        progressive_loss(Blur(T=4), Tiny(64), Tiny(64), torch.zeros(2, 1, 8, 8), [4, 2], space="x0")


def test_the_step_weight_divides_each_error_by_the_teachers_step():
    """weight=step: a student off the target by delta in every element of x_s has loss delta^2 / mean((x_s* - x_t)^2)
    per sample (one grid step here, so every sample's step is known in closed form); the ideal student still 0."""
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    grid = [1000, 500]
    x0 = 0.3 + 0.5 * torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t, m, s = torch.full((8,), 1000), torch.full((8,), 500), torch.full((8,), 0)
    g = torch.Generator().manual_seed(1)
    torch.randint(0, 1, (8,), generator=g)  # progressive_loss's draws with the same seed: the step, then the noise
    x_t = process(x0, t, process.sample_noise(x0, g))
    target = teacher_target(process, teacher, x_t, [t, m, s])

    def ideal(x, tt):
        return process.x0_reaching(x, tt, teacher_target(process, teacher, x, [tt, m, s]), s)

    def off(x, tt):  # at s = 0 the step lands on x0_hat itself: off by 0.1 in x0_hat is off by 0.1 in x_s
        return ideal(x, tt) + 0.1

    assert float(progressive_loss(process, ideal, teacher, x0, grid, torch.Generator().manual_seed(1), weight="step")) < 1e-24
    loss = progressive_loss(process, off, teacher, x0, grid, torch.Generator().manual_seed(1), weight="step")
    expected = (0.01 / (target - x_t).pow(2).mean(1)).mean()
    torch.testing.assert_close(float(loss), float(expected), rtol=1e-9, atol=0)
    with pytest.raises(UdmError, match="weight=step weighs the loss between states"):
        progressive_loss(process, off, teacher, x0, grid, space="x0", weight="step")
    with pytest.raises(UdmError, match="weight='snr'"):
        Progressive({"_target_": "udm.samplers.DDIM"}, 4, 2, weight="snr").check(process)
    latent = PROCESSES["latent"]()
    net = Tiny(state_size(latent, torch.zeros(2, 1, 8, 8)))
    with pytest.raises(UdmError, match="weight=step .* goes from a code to data: use weight=none"):
        progressive_loss(latent, net, net, torch.zeros(4, 1, 8, 8), [250, 125], weight="step")


def test_the_l1_norm_takes_the_absolute_error():
    """norm=l1: a student off the target by 0.1 + 0.2 u (u in {0, 1} per element) at the last step has loss
    mean|.| = 0.1 + 0.2 mean(u), where l2 gives its square; the step weight divides by mean|x_s* - x_t|."""
    process = Affine(vp_linear(1000), T=1000, parametrization="x0", scale_input=False)
    teacher = exact_denoiser(process)
    x0 = 0.3 + 0.5 * torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    t, m, s = torch.full((8,), 1000), torch.full((8,), 500), torch.full((8,), 0)

    def off(x, tt):
        return process.x0_reaching(x, tt, teacher_target(process, teacher, x, [tt, m, s]), s) + 0.1 + 0.2 * u

    def loss(**kwargs):
        return float(progressive_loss(process, off, teacher, x0, [1000, 500], torch.Generator().manual_seed(1), **kwargs))

    torch.testing.assert_close(loss(norm="l1"), 0.2, rtol=1e-9, atol=0)
    torch.testing.assert_close(loss(), (0.01 + 0.09) / 2, rtol=1e-9, atol=0)
    g = torch.Generator().manual_seed(1)
    torch.randint(0, 1, (8,), generator=g)
    x_t = process(x0, t, process.sample_noise(x0, g))
    expected = (0.2 / (teacher_target(process, teacher, x_t, [t, m, s]) - x_t).abs().mean(1)).mean()
    torch.testing.assert_close(loss(norm="l1", weight="step"), float(expected), rtol=1e-9, atol=0)
    for objective in (lambda: Progressive({"_target_": "udm.samplers.DDIM"}, 4, 2, norm="huber"),
                      lambda: Consistency({"_target_": "udm.samplers.DDIM"}, 4, norm="huber"),
                      lambda: progressive_loss(process, off, teacher, x0, [1000, 500], norm="huber")):
        with pytest.raises(UdmError, match="norm='huber': a distillation's error is l2 \\(squared\\) or l1"):
            objective()


def test_the_rounds_halve_the_steps_on_nested_grids_only():
    flow = Affine(Flow(), T=1000, parametrization="velocity")
    rounds = Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=2)
    assert rounds.rounds == 3 and [rounds.steps(r) for r in range(3)] == [8, 4, 2]
    teacher, student = rounds.times(flow, 1)
    assert len(teacher) == 8 and student == teacher[::2]
    rounds.check(flow)
    with pytest.raises(UdmError, match="inverse step.*DPMSolver"):  # its x0_hat extrapolation is no single step
        Progressive({"_target_": "udm.samplers.DPMSolver", "grid": "solver_time"}, 16, 2)
    nested = Progressive({"_target_": "udm.samplers.Euler", "grid": "solver_time"}, 16, 2)  # log-SNR grids do not nest
    with pytest.raises(UdmError, match="every other time.*grid=uniform"):
        nested.check(Affine(vp_linear(1000), T=1000, parametrization="eps"))
    with pytest.raises(UdmError, match="divides the steps by factor=2.*teacher_steps=12"):
        Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=12, student_steps=2)
    with pytest.raises(UdmError, match="inverse step.*Heun"):
        Progressive({"_target_": "udm.samplers.Heun"}, teacher_steps=16, student_steps=2)
    by_four = Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=4, factor=4)
    assert by_four.rounds == 1 and by_four.steps(0) == 4
    teacher, student = by_four.times(flow, 0)
    assert len(teacher) == 16 and student == teacher[::4]
    by_four.check(flow)
    with pytest.raises(UdmError, match="every 4-th time"):
        Progressive({"_target_": "udm.samplers.Euler", "grid": "solver_time"}, 16, 4, factor=4).check(
            Affine(vp_linear(1000), T=1000, parametrization="eps"))
    assert Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=64, student_steps=1, factor=4).rounds == 3
    with pytest.raises(UdmError, match="factor=4 every round: .*4, 16, ...; got teacher_steps=16, student_steps=2"):
        Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=2, factor=4)
    for factor in (1, 2.0, "4"):
        with pytest.raises(UdmError, match="factor is the number of teacher steps"):
            Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=4, factor=factor)
    with pytest.raises(UdmError, match="inverse step.*DDIM"):
        Consistency({"_target_": "udm.samplers.DDIM", "eta": 1.0}, teacher_steps=16)
    blur = Blur(T=50, std_max=8.0)  # the power grid nests: t_i = round(T (i/n)^p) at i = k j is the grid at n/k
    for factor in (2, 4):
        on_power = Progressive({"_target_": "udm.samplers.Improved", "grid": "power", "power": 0.5}, 16, 4, factor=factor)
        on_power.check(blur)
        teacher, student = on_power.times(blur, on_power.rounds - 1)
        assert student == teacher[::factor] == [50, 43, 35, 25]  # round(50 (i/4)^0.5)
    # where rounding makes times collide, the fix-up moves them and the grids no longer nest: refused, with a way out
    crowded = Progressive({"_target_": "udm.samplers.Improved", "grid": "power", "power": 0.5}, 32, 16)
    with pytest.raises(UdmError, match="every other time.*fewer teacher_steps or a power nearer 1"):
        crowded.check(blur)


PROGRESSIVE = {"distilled": {"method": "progressive", "steps": 2, "teacher": "TEACHER",
                             "sampler": {"_target_": "udm.samplers.Euler", "steps": 2}}}
CONSISTENCY = {"distilled": {"method": "consistency", "steps": 2, "sampler": {"_target_": "udm.samplers.Naive", "steps": 2}}}


def test_a_progressive_student_takes_the_inverse_step_on_its_grid_and_no_more_steps():
    from udm.distill.recipe import check_student
    from udm.samplers import AnalyticDPM, AnnealedLangevin, Euler, Heun, Improved, PredictorCorrector

    flow = Affine(Flow(), T=1000, parametrization="velocity")
    for fitting in (Euler(steps=2), Euler(steps=1), DDIM(steps=2)):  # DDIM at eta = 0 is the same step
        check_student(PROGRESSIVE, fitting, flow)
    refused = {"needs 4 network evaluations": Euler(steps=4),
               "learned its steps on the times \\[1000, 500\\]": Euler(steps=2, grid="karras"),
               "Heun takes another step rule": Heun(steps=2),
               "DDIM takes another step rule": DDIM(steps=2, eta=1.0),
               "PredictorCorrector samples another way": PredictorCorrector(steps=2, eta=0.0),
               "AnalyticDPM samples another way": AnalyticDPM(steps=2),
               "AnnealedLangevin samples another way": AnnealedLangevin(steps=2)}
    for message, sampler in refused.items():
        with pytest.raises(UdmError, match=message):
            check_student(PROGRESSIVE, sampler, flow)
    check_student({}, Heun(steps=2), flow)  # a model that was not distilled takes any sampler
    on_power = {"distilled": {"method": "progressive", "steps": 4, "teacher": "TEACHER",
                              "sampler": {"_target_": "udm.samplers.Improved", "grid": "power", "power": 0.5, "steps": 4}}}
    blur = Blur(T=50, std_max=8.0)
    check_student(on_power, Improved(steps=4, grid="power", power=0.5), blur)
    check_student(on_power, Improved(steps=2, grid="power", power=0.5), blur)  # fewer steps on the same grid
    with pytest.raises(UdmError, match="learned its steps on the times \\[50, 43, 35, 25\\]; this sampler visits "
                                       "\\[50, 38, 25, 12\\]: sample it on the student's grid \\(grid=power, power=0.5\\)"):
        check_student(on_power, Improved(steps=4), blur)


def test_a_consistency_student_samples_by_the_baseline_step_at_any_steps():
    from udm.distill.recipe import check_student
    from udm.samplers import Naive

    flow = Affine(Flow(), T=1000, parametrization="velocity")
    for steps in (1, 2, 8, 50):
        check_student(CONSISTENCY, Naive(steps=steps), flow)
    with pytest.raises(UdmError, match="consistency model.*DDIM"):
        check_student(CONSISTENCY, DDIM(steps=2), flow)


def test_a_distillation_config_refuses_what_its_objective_cannot_use():
    """experiment=distill_mnist's x0 space does not apply to consistency distillation; Lightning's EMA is refused;
    a progressive student teaches at most the steps it learned."""
    from udm.jobs.train import distillation

    from .conftest import compose_train

    from hydra.errors import InstantiationException

    cfg = compose_train("experiment=distill_mnist", "distill=consistency", "teacher=T")
    with pytest.raises(InstantiationException, match="distill.space does not apply to consistency distillation"):
        distillation(cfg, {})
    cfg = compose_train("experiment=distill_mnist", "teacher=T", "+callbacks.ema._target_=x")
    with pytest.raises(UdmError, match="set callbacks.ema=null"):
        distillation(cfg, {})
    cfg = compose_train("experiment=distill_mnist", "teacher=T", "distill.teacher_steps=4", "distill.student_steps=1")
    with pytest.raises(UdmError, match="distilled for 2 steps; it cannot teach with distill.teacher_steps=4"):
        distillation(cfg, PROGRESSIVE)
    assert distillation(compose_train("experiment=distill_mnist", "teacher=T"), {}).rounds == 3


def test_a_resume_continues_the_same_rounds_only():
    """A distillation resumes with its method, teacher steps, round length and factor; a checkpoint written before
    `factor` existed was a halving one."""
    from pathlib import Path

    from udm.distill.progressive import entry
    from udm.jobs.train import check_same_distillation

    halving = Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=4)
    quartering = Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=4, factor=4)
    written = entry(halving, 0)
    assert written["factor"] == 2 and written["steps"] == 8 and entry(quartering, 0)["steps"] == 4
    check_same_distillation(Path("run"), written, halving)
    old = {k: v for k, v in written.items() if k not in ("factor", "states", "norm")}  # written before these keys
    check_same_distillation(Path("run"), old, halving)
    with pytest.raises(UdmError, match="run holds factor=2; this command asks for factor=4: resume it"):
        check_same_distillation(Path("run"), written, quartering)
    for key, value in (("states", "teacher"), ("norm", "l1")):
        changed = Progressive({"_target_": "udm.samplers.Euler"}, teacher_steps=16, student_steps=4, **{key: value})
        with pytest.raises(UdmError, match=f"asks for .*{key}={value}"):
            check_same_distillation(Path("run"), old, changed)
    consistency = Consistency({"_target_": "udm.samplers.Euler"}, teacher_steps=16, norm="l1")
    check_same_distillation(Path("run"), entry(consistency, 0), consistency)
    with pytest.raises(UdmError, match="norm=l2; this command asks for .*norm=l1"):
        check_same_distillation(Path("run"), {k: v for k, v in entry(consistency, 0).items() if k != "norm"}, consistency)
    with pytest.raises(UdmError, match="a model's training \\(no teacher\\)"):
        check_same_distillation(Path("run"), None, halving)
    # held where the checkpoint records them: the loss's space and weight, the EMA target's decay, the teacher's grid
    assert written["space"] == "x_s" and written["teacher_sampler"] == {"_target_": "udm.samplers.Euler"}
    changes = {"space=x_s.*space=x0": Progressive({"_target_": "udm.samplers.Euler"}, 16, 4, space="x0"),
               "weight=none.*weight=step": Progressive({"_target_": "udm.samplers.Euler"}, 16, 4, weight="step"),
               "distill.sampler=.*'grid': 'power', 'power': 0.5": Progressive(
                   {"_target_": "udm.samplers.Euler", "grid": "power", "power": 0.5}, 16, 4)}
    older = {k: v for k, v in written.items() if k not in ("space", "weight", "teacher_sampler")}
    for message, changed in changes.items():
        with pytest.raises(UdmError, match=message):
            check_same_distillation(Path("run"), written, changed)
        check_same_distillation(Path("run"), older, changed)  # an older checkpoint recorded none of them
    slower = Consistency({"_target_": "udm.samplers.Euler"}, teacher_steps=16, norm="l1", target_decay=0.99)
    with pytest.raises(UdmError, match="target_decay=0.95; this command asks for .*target_decay=0.99"):
        check_same_distillation(Path("run"), entry(consistency, 0), slower)


def test_teacher_states_are_the_states_the_teachers_sampler_visits_from_the_prior():
    """states=teacher: each sample's x_t is where the teacher's own sampler, started from x_T ~ p(x_T) (the same draw),
    stands at that sample's time; a cold prior's fresh noise is in it, which F_t(x0, 0) never has."""
    from udm.distill.progressive import start_states
    from udm.samplers import Improved
    from udm.samplers.grids import time_tensor

    torch.manual_seed(0)
    process = Blur(T=20, prior_noise=0.01)
    teacher = Tiny(64).double()
    x0 = torch.rand(6, 1, 8, 8, dtype=torch.float64) * 2 - 1
    times = [20, 15, 10, 5]
    grid, i = time_tensor(times + [0]), torch.tensor([0, 1, 2, 3, 2, 0])
    x_t = start_states(process, teacher, x0, grid, i, "teacher", torch.Generator().manual_seed(7))

    sampler = Improved(steps=None)
    sampler.grid = Explicit(times)
    visited = [process.prior(x0, torch.Generator().manual_seed(7))]
    sampler(process, teacher, visited[0], callback=lambda step: visited.append(step.x_s))
    for row, k in enumerate(i.tolist()):
        torch.testing.assert_close(x_t[row], visited[k][row], rtol=0, atol=1e-12)

    forward = start_states(process, teacher, x0, grid, i, "forward")
    torch.testing.assert_close(forward, process.degrade(x0, grid[i]), rtol=0, atol=0)
    assert float((x_t[0] - forward[0]).abs().max()) > 1e-3  # the prior's noise, at T
    with pytest.raises(UdmError, match="states='prior'"):
        start_states(process, teacher, x0, grid, i, "prior")
    with pytest.raises(UdmError, match="from the prior at T=20; this grid starts at 15"):
        start_states(process, teacher, x0, time_tensor([15, 10, 0]), torch.tensor([0, 1]), "teacher")
    with pytest.raises(UdmError, match="states='prior'"):
        Progressive({"_target_": "udm.samplers.Improved"}, 16, 4, states="prior")
    with pytest.raises(UdmError, match="states='prior'"):
        Consistency({"_target_": "udm.samplers.Improved"}, 16, states="prior")


def test_the_objectives_pass_their_knobs_to_the_loss():
    """Progressive(factor, states, norm).loss is progressive_loss with those settings on its round's grid, and not the
    defaults'; Consistency(states, norm).loss likewise."""
    torch.manual_seed(0)
    process = Blur(T=16)
    x0 = torch.rand(8, 1, 8, 8, dtype=torch.float64) * 2 - 1
    teacher = Tiny(64).double()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rounds = Progressive({"_target_": "udm.samplers.Improved"}, teacher_steps=16, student_steps=4, factor=4,
                         states="teacher", norm="l1")
    grid = rounds.times(process, 0)[0]
    assert len(grid) == 16

    def g():
        return torch.Generator().manual_seed(5)

    ours = rounds.loss(process, student, teacher, x0, 0, g())
    torch.testing.assert_close(ours, progressive_loss(process, student, teacher, x0, grid, g(), factor=4,
                                                      states="teacher", norm="l1"), rtol=0, atol=0)
    assert not torch.isclose(ours, progressive_loss(process, student, teacher, x0, grid, g()))
    target = copy.deepcopy(teacher)
    cd = Consistency({"_target_": "udm.samplers.Improved"}, teacher_steps=8, states="teacher", norm="l1")
    times = cd.sampler.timesteps(process)
    ours = cd.loss(process, student, teacher, x0, 0, g(), target=target)
    torch.testing.assert_close(ours, consistency_loss(process, student, target, teacher, x0, times, g(),
                                                      states="teacher", norm="l1"), rtol=0, atol=0)
    assert not torch.isclose(ours, consistency_loss(process, student, target, teacher, x0, times, g()))
