"""udm's samplers against peer implementations of the same algorithms: diffusers, k-diffusion, flow_matching.

Every test runs udm and the peer on the same model and the same start noise and compares the FULL trajectories
(every intermediate state, not only the end) to within TOL. The model is closed form, so nothing is trained:
data x0 ~ N(MU, S^2) per dimension, whose exact denoiser for x_t = a x0 + b eps is

    D(x_t; a, b) = E[x0 | x_t] = MU + a S^2 (x_t - a MU) / (a^2 S^2 + b^2),

and each side's net (eps, velocity or denoiser, as that side wants it) is built from that one function. Each test
also makes one of udm's net evaluations 5% off and checks that the comparison sees it (the tolerance is tight
enough to catch one wrong step). udm runs in float64; diffusers computes its steps in float32 whatever the input
(measured: ~5e-7 off), k-diffusion and flow_matching run in float64 and are held to F64_TOL.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from udm.processes.affine import Affine
from udm.processes.gaussian import Gaussian
from udm.processes.schedules import Flow, Geometric
from udm.samplers import DPMSolver, Euler, Explicit, Heun
from udm.samplers.grids import time_tensor

TOL = 1e-3  # the agreement asked of every peer, over every state of the trajectory
F64_TOL = 1e-9  # k-diffusion and flow_matching compute in float64 as udm does: they agree to rounding (~1e-13)
MU, S = 0.3, 0.5
T = 1000


def col(v, x):
    """A per-sample (or scalar) coefficient shaped to broadcast against x."""
    v = torch.as_tensor(v, dtype=torch.float64)
    return v.reshape(-1, *[1] * (x.ndim - 1)) if v.ndim else v


def denoiser(x, a, b):
    """E[x0 | x_t = x] for x0 ~ N(MU, S^2), x_t = a x0 + b eps."""
    a, b = col(a, x), col(b, x)
    return (MU + a * S**2 * (x - a * MU) / (a**2 * S**2 + b**2)).to(x.dtype)


def eps_of(x, a, b):
    """E[eps | x_t = x], the noise the exact denoiser implies (b > 0)."""
    return ((x - col(a, x) * denoiser(x, a, b)) / col(b, x)).to(x.dtype)


def flow_velocity(x, u):
    """dx_t/du on the flow path x_t = (1 - u) x0 + u eps: E[eps - x0 | x_t]."""
    u = torch.as_tensor(u, dtype=torch.float64)
    return eps_of(x, 1 - u, u) - denoiser(x, 1 - u, u)


def udm_model(process, kind):
    """udm's net: model(x_t, t) -> the raw output of `kind` from the exact denoiser at the process's (a_t, b_t)."""
    def model(x, t):
        a, b = process.coefficients(t)
        if kind == "x0":
            return denoiser(x, a, b)
        if kind == "eps":
            return eps_of(x, a, b)
        return flow_velocity(x, t.double() / process.T)  # velocity on the flow schedule (u = t / T)
    return model


def perturbed(model, step):
    """The model with its output 5% off on its `step`-th call (counting from 0): one wrong net evaluation."""
    calls = []

    def wrong(x, t):
        out = model(x, t)
        calls.append(None)
        return out * 1.05 if len(calls) == step + 1 else out
    return wrong


def udm_trajectory(sampler, process, model, x_T):
    """x_s after every step of a udm sampler, stacked: [steps, *x.shape]."""
    states = []
    sampler(process, model, x_T.clone(), callback=lambda step: states.append(step.x_s.clone()))
    return torch.stack(states)


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def check_agreement(ours, theirs, wrong, tol=TOL):
    """udm's trajectory within `tol` (<= TOL) of the peer's at every step, and one 5%-wrong step outside TOL."""
    diff, off = max_diff(ours, theirs), max_diff(wrong, theirs)
    print(f"max |udm - peer| = {diff:.3g}; with one wrong step {off:.3g}")
    assert diff <= tol, f"udm and the peer differ by {diff:.3g} somewhere along the trajectory"
    assert off > 2 * TOL, f"the comparison does not notice a wrong step ({off:.3g})"


# --- diffusers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [8, 25])
def test_flow_euler_matches_diffusers(steps):
    """udm's Euler on the flow process (velocity = eps - x0) equals diffusers' FlowMatchEulerDiscreteScheduler step
    by step, on the scheduler's own sigmas (sigma = u; udm's time t = 1000 sigma, real-valued, the final 0 dropped
    since every udm grid ends at the data)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T, shift=1.0)
    sched.set_timesteps(steps)
    x_T = torch.randn(4, 3, 8, 8, dtype=torch.float64)

    theirs, x = [], x_T.clone()
    for timestep in sched.timesteps:
        v = flow_velocity(x, timestep.double() / T)
        x = sched.step(v, timestep, x).prev_sample
        theirs.append(x.double())
    theirs = torch.stack(theirs)

    process = Affine(Flow(), T=T, parametrization="velocity", scale_input=False)
    times = [float(s) * T for s in sched.sigmas[:-1].double()]
    assert float(sched.sigmas[-1]) == 0.0
    sampler = Euler(steps=None, grid=Explicit(times))
    model = udm_model(process, "velocity")
    ours = udm_trajectory(sampler, process, model, x_T)
    wrong = udm_trajectory(sampler, process, perturbed(model, steps // 2), x_T)
    check_agreement(ours, theirs, wrong)


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_3m_matches_diffusers(steps):
    """udm's DPMSolver(order=3) equals diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 3, midpoint for its
    second-order steps, lower_order_final, final sigma zero) on diffusers' linear-beta schedule and its default
    'linspace' timesteps. udm's time t is diffusers' timestep + 1 (udm's t = 0 is the clean data, so alphabar_t =
    diffusers' alphas_cumprod[t - 1]); both nets are the same eps function of udm's time. With 10 steps (< 15)
    lower_order_final makes the last two steps first and second order, with 20 only the last, into the data."""
    diffusers = pytest.importorskip("diffusers")

    def scheduler(lower_order_final=True):
        sched = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, solver_order=3,
            algorithm_type="dpmsolver++", final_sigmas_type="zero", lower_order_final=lower_order_final,
            prediction_type="epsilon")
        sched.set_timesteps(steps)
        return sched

    process = Gaussian(T=T, clip_denoised=False)
    model = udm_model(process, "eps")
    x_T = torch.randn(4, 16, dtype=torch.float64)

    def diffusers_run(sched):
        out, x = [], x_T.clone()
        for timestep in sched.timesteps:
            eps = model(x, torch.full((x.shape[0],), int(timestep) + 1))
            x = sched.step(eps, timestep, x).prev_sample
            out.append(x.double())
        return torch.stack(out)

    sched = scheduler()
    theirs = diffusers_run(sched)
    grid = Explicit([int(t) + 1 for t in sched.timesteps])
    sampler = DPMSolver(steps=None, order=3, grid=grid)
    ours = udm_trajectory(sampler, process, model, x_T)
    wrong = udm_trajectory(sampler, process, perturbed(model, steps // 2), x_T)
    check_agreement(ours, theirs, wrong)
    # The comparison tells the third-order update from the second-order one
    second = udm_trajectory(DPMSolver(steps=None, order=2, grid=grid), process, model, x_T)
    print(f"2M instead of 3M: {max_diff(second, theirs):.3g}")
    assert max_diff(second, theirs) > 2 * TOL
    if steps < 15:  # and it sees lower_order_final's second-order step before the last
        unlowered = diffusers_run(scheduler(lower_order_final=False))
        print(f"diffusers without lower_order_final: {max_diff(unlowered, ours):.3g}")
        assert max_diff(unlowered, ours) > 2 * TOL


# --- k-diffusion -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def k_sampling():
    """k-diffusion's sampling.py alone, as the module `k_diffusion.sampling`.

    k-diffusion is installed with --no-deps (its declared deps pull torchvision and wandb), and its package
    __init__ imports torchvision and skimage, which are absent. sampling.py itself needs only `from . import utils`
    (for append_dims), scipy, torchdiffeq, tqdm and torchsde (whose BrownianTree only the SDE samplers use, not the
    ones tested here). So the package and its utils are stubbed, torchsde too if missing, while sampling.py runs;
    the stubs leave sys.modules afterwards (the loaded module keeps its own references)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    for dep in ("scipy", "torchdiffeq", "tqdm"):
        pytest.importorskip(dep)
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"

    package = types.ModuleType("k_diffusion")
    package.__path__ = []
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    stubs = {"k_diffusion": package, "k_diffusion.utils": utils}
    if importlib.util.find_spec("torchsde") is None:
        stubs["torchsde"] = types.ModuleType("torchsde")
    with pytest.MonkeyPatch.context() as mp:
        for name, module in stubs.items():
            mp.setitem(sys.modules, name, module)
        sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", path)
        sampling = importlib.util.module_from_spec(sampling_spec)
        mp.setitem(sys.modules, "k_diffusion.sampling", sampling)
        sampling_spec.loader.exec_module(sampling)
    return sampling


def karras_sigmas(k_sampling, steps):
    """k-diffusion's Karras sigmas, built in float64 (its ramp takes torch's default dtype)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return k_sampling.get_sigmas_karras(steps, 0.002, 80.0, rho=7.0)
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("name", ["euler", "heun"])
@pytest.mark.parametrize("steps", [6, 18])
def test_edm_samplers_match_k_diffusion(k_sampling, name, steps):
    """udm's Euler and Heun on the Karras grid of EDM's schedule (a = 1, b = sigma in [0.002, 80]) equal
    k-diffusion's sample_euler and sample_heun (no churn) on get_sigmas_karras(steps, 0.002, 80, rho=7), from the
    same x_T = 80 * noise. k-diffusion's callback sees x before each step; its trajectory is those after the first
    plus the result. udm's Karras grid takes sigma_max = 80 at the start and sigma_min = 0.002 at t = 1."""
    sigmas = karras_sigmas(k_sampling, steps)
    x_T = 80 * torch.randn(4, 3, 8, 8, dtype=torch.float64)

    seen = []
    k_sampler = getattr(k_sampling, f"sample_{name}")
    final = k_sampler(lambda x, sigma: denoiser(x, 1.0, sigma), x_T.clone(), sigmas, disable=True,
                      callback=lambda d: seen.append(d["x"].clone()))
    theirs = torch.stack(seen[1:] + [final])

    process = Affine(Geometric(0.002, 80.0, u_min=1e-3), T=T, parametrization="x0", scale_input=False)
    sampler = (Euler if name == "euler" else Heun)(steps=steps, grid="karras")
    ours_sigmas = process.noise_scale(time_tensor(sampler.timesteps(process)))
    assert max_diff(ours_sigmas / sigmas[:-1], torch.ones(steps)) < 1e-12  # the same grid
    model = udm_model(process, "x0")
    ours = udm_trajectory(sampler, process, model, x_T)
    wrong = udm_trajectory(sampler, process, perturbed(model, steps // 2), x_T)
    check_agreement(ours, theirs, wrong, tol=F64_TOL)


# --- flow_matching -----------------------------------------------------------------------------------------


def test_cond_ot_path_matches_flow_process():
    """flow_matching's CondOTProbPath, x_t = tau x1 + (1 - tau) x0 with x0 the noise and x1 the data, is udm's flow
    process at u = 1 - tau (udm's t = T (1 - tau)); its dx_t (d/dtau) is minus udm's velocity target (d/du)."""
    path_module = pytest.importorskip("flow_matching.path")
    path = path_module.CondOTProbPath()
    process = Affine(Flow(), T=T, parametrization="velocity", scale_input=False)
    data = MU + S * torch.randn(6, 16, dtype=torch.float64)
    noise = torch.randn(6, 16, dtype=torch.float64)
    tau = torch.cat([torch.tensor([0.0, 1.0], dtype=torch.float64), torch.rand(4, dtype=torch.float64)])
    sample = path.sample(x_0=noise, x_1=data, t=tau)
    t = T * (1 - tau)
    assert max_diff(sample.x_t, process(data, t, noise)) < 1e-12
    assert max_diff(sample.dx_t, -process.target(data, t, noise)) < 1e-12


@pytest.mark.parametrize("steps", [5, 20])
def test_flow_euler_matches_flow_matching_ode_solver(steps):
    """udm's Euler on the uniform grid of `steps` equals flow_matching's ODESolver (torchdiffeq's Euler, step 1/steps)
    from the same noise: their time runs tau = 1 - u from 0 (noise) to 1 (data) and their velocity is d/dtau =
    minus udm's; return_intermediates gives the state at every grid time, the first being the noise itself."""
    pytest.importorskip("torchdiffeq")
    solver_module = pytest.importorskip("flow_matching.solver")
    wrapper_module = pytest.importorskip("flow_matching.utils")

    class Velocity(wrapper_module.ModelWrapper):
        def forward(self, x, t, **extras):
            return -flow_velocity(x, 1 - t.double())

    x_T = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    solver = solver_module.ODESolver(velocity_model=Velocity(torch.nn.Identity()))
    with torch.no_grad():
        sol = solver.sample(x_init=x_T.clone(), method="euler", step_size=1 / steps, return_intermediates=True,
                            time_grid=torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    assert max_diff(sol[0], x_T) == 0
    theirs = sol[1:]

    process = Affine(Flow(), T=T, parametrization="velocity", scale_input=False)
    sampler = Euler(steps=steps)
    model = udm_model(process, "velocity")
    ours = udm_trajectory(sampler, process, model, x_T)
    wrong = udm_trajectory(sampler, process, perturbed(model, steps // 2), x_T)
    check_agreement(ours, theirs, wrong, tol=F64_TOL)
