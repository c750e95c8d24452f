"""The contract of every process config x every sampler config (diffusers' SchedulerCommonTest, for udm).

Each pair either composes and, fed an oracle x0_hat = x0 from x_T = F_T(x0, eps), returns x0 (exactly for
tokens; to float64 rounding for real values), or is refused with one UdmError that names the process. Which
pairs are refused is written down below, so a sampler that starts ignoring a knob, or refusing a process it
served, fails here.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from udm.cli import CONF_DIR
from udm.errors import UdmError
from udm.jobs.train import fill_from_data
from udm.processes import Affine, Blur, ForwardProcess, Latent, TokenProcess
from udm.processes.base import per_sample
from udm.samplers import DDIM, DDPM, Baseline, Mixed, Sampler

from .conftest import compose_train

TOKENS = {"length": 8, "vocab_size": 12, "mask_id": 11, "special_ids": [0, 11]}
PROCESSES = sorted(p.stem for p in (Path(CONF_DIR) / "process").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml"))
SMALL = {"gaussian": ["process.T=40"], "vp": ["process.T=40"], "flow": ["process.T=40"], "edm": ["process.T=40"], "latent": ["process.T=40"], "latent_tokens": ["process.T=40"], "ve": ["process.T=20"],
         "blur": ["process.T=12"], "inpaint": ["process.T=12"], "pixelate": ["process.T=12"]}

AFFINE = {"gaussian", "vp", "ve", "flow", "edm"}  # the affine Gaussian process over its schedules
GAUSSIAN_NOISE = AFFINE | {"latent", "latent_tokens"}
SCORE = AFFINE | {"latent", "latent_tokens"}
EXTRAPOLATES = AFFINE | {"blur", "inpaint", "pixelate"}
REMASKS = {p for p in PROCESSES if p.startswith("token_")}  # the mixed step with eta > 0 remasks tokens (ReMDM)
SERVES = {  # sampler config -> the process configs it must serve; every other process must be refused
    "ddim": set(PROCESSES), "improved": set(PROCESSES), "naive": set(PROCESSES), "euler": set(PROCESSES),
    "ddpm": GAUSSIAN_NOISE | REMASKS, "remdm": REMASKS,
    "ddpm_beta": GAUSSIAN_NOISE - {"ve"},  # SMLD's VarianceExploding keeps its one variance
    "pc": SCORE, "langevin": SCORE, "dpm_solver": EXTRAPOLATES, "dpm_solver_3m": EXTRAPOLATES, "heun": AFFINE,
    "analytic_ddpm": {"gaussian", "vp", "latent", "latent_tokens"}, "analytic_ddim": {"gaussian", "vp", "latent", "latent_tokens"},
}


def build_process(name: str) -> ForwardProcess:
    if name.startswith("token_") or name == "latent_tokens":
        experiment = "quatrain_latent" if name == "latent_tokens" else "quatrain_mask"
        cfg = compose_train(f"experiment={experiment}", f"process={name}", *SMALL.get(name, []))
        fill_from_data(cfg.process, TOKENS, "process")
    else:
        cfg = compose_train(f"process={name}", "data=digits", *SMALL.get(name, []))
    if name == "latent":  # identity coders, so that the oracle's decoded x0_hat is x0 itself
        cfg.process.encoder = cfg.process.decoder = {"_target_": "udm.nets.IdentityCoder"}
    process = instantiate(cfg.process)
    if name == "latent_tokens":  # a head tied to the unit-RMS embeddings decodes E(x0) to x0 (Cauchy-Schwarz)
        with torch.no_grad():
            process.decoder.head.weight.copy_(process.encoder.embedding.weight)
            process.decoder.head.bias.zero_()
    return process.double() if process.capabilities.real_valued else process


def data_for(process: ForwardProcess, g: torch.Generator) -> torch.Tensor:
    if isinstance(process, TokenProcess):
        return process.regular[torch.randint(0, len(process.regular), (3, TOKENS["length"]), generator=g)]
    if not process.capabilities.real_valued:  # the encoding model of tokens
        return torch.randint(1, TOKENS["vocab_size"] - 1, (3, TOKENS["length"]), generator=g)
    return torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8


def oracle(process: ForwardProcess, x0: torch.Tensor):
    """model(x_t, t) whose x0_hat is exactly x0: the raw output each parametrization turns into x0."""

    def model(x_t, t):
        if isinstance(process, TokenProcess):
            return F.one_hot(x0, process.vocab_size).float() * 60 - 30
        if isinstance(process, Latent):
            z0 = process.encoder(x0)
            return process.latent.target(z0, t, process.latent.inverse(z0, x_t, t))
        if isinstance(process, Affine):  # eps, x0, v, velocity or edm; x_t as the net saw it (c_in x_t)
            if process.scale_input:
                x_t = x_t / per_sample(process.input_scale(t), x_t)
            return process.target(x0, t, process.inverse(x0, x_t, t))
        return x0  # cold: the net predicts x0

    return model


def build_sampler(name: str, process: ForwardProcess):
    cfg = compose_train(f"sampler={name}")
    if cfg.sampler.get("steps") is not None:  # the configs' step counts, capped at the small processes' T
        cfg.sampler.steps = min(cfg.sampler.steps, process.T)
    if name.startswith("analytic"):  # the moments a checkpoint's prepare() would estimate: Gamma_t = 1 (x0 known)
        return instantiate(cfg.sampler, gamma=torch.ones(process.T + 1))
    if name == "langevin":
        return instantiate(cfg.sampler, steps_per_level=2)
    return instantiate(cfg.sampler)


@pytest.mark.parametrize("process_name", PROCESSES)
@pytest.mark.parametrize("sampler_name", SAMPLERS)
def test_every_pair_recovers_x0_or_is_refused(process_name, sampler_name):
    assert sampler_name in SERVES, f"add conf/sampler/{sampler_name}.yaml to the contract's SERVES table"
    process = build_process(process_name)
    sampler = build_sampler(sampler_name, process)
    g = torch.Generator().manual_seed(0)
    x0 = data_for(process, g)
    t = torch.full((len(x0),), process.T, dtype=torch.long)
    x_T = process(x0, t, process.sample_noise(x0, g))
    model = oracle(process, x0)
    if process_name not in SERVES[sampler_name]:
        with pytest.raises(UdmError) as refusal:
            sampler.prepare(process, model)(process, model, x_T, generator=g)
        message = str(refusal.value)
        assert process.describe() in message and "\n" not in message, message
        return
    out = sampler.prepare(process, model)(process, model, x_T, generator=g)
    if out.is_floating_point():
        torch.testing.assert_close(out, x0.to(out.dtype), rtol=0, atol=1e-9)
    else:
        assert torch.equal(out, x0)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_every_process_keeps_the_contract(process_name):
    """x_0 = F_0(x0, eps) = x0 for any eps, and the inverse finds an eps that F_t maps back to x_t."""
    process = build_process(process_name)
    g = torch.Generator().manual_seed(1)
    x0 = data_for(process, g)
    zero = torch.zeros(len(x0), dtype=torch.long)
    eps = process.sample_noise(x0, g)
    x_0 = process(x0, zero, eps)
    # blur's D_0 is the identity through an FFT round trip: exact to float64 rounding, not bit for bit
    assert torch.equal(x_0, x0) if not x0.is_floating_point() else torch.allclose(x_0, x0, rtol=0, atol=1e-12)
    for t_int in (1, process.T // 2, process.T):
        t = torch.full((len(x0),), t_int, dtype=torch.long)
        x_t = process(x0, t, eps)
        if process.capabilities.invertible:
            again = process(x0, t, process.inverse(x0, x_t, t))
            assert torch.equal(again, x_t) if not again.is_floating_point() else torch.allclose(again, x_t, atol=1e-12)


def test_eta_is_refused_where_there_is_no_gaussian_noise_nor_remasking():
    """The knob that used to be dropped silently: eta > 0 on blur (sigma = 0); token processes remask instead."""
    process = build_process("blur")
    with pytest.raises(UdmError, match=r"eta=0\.5 .*needs Gaussian noise.*" + type(process).__name__):
        DDIM(steps=3, eta=0.5).check(process)
    DDIM(steps=3, eta=0.0).check(process)  # eta = 0 is the inverse step, which it has
    for name in sorted(REMASKS):
        DDIM(steps=3, eta=0.5).check(build_process(name))


def test_cold_processes_with_noise_take_the_mixed_step_and_ddpm():
    """sigma > 0 gives cold diffusion Gaussian noise e ~ N(0, sigma^2): eta blends eps_hat with fresh noise
    (r = eta, the 'blend' variance), so DDPM (eta = 1) is the baseline step there, drawn with the same z."""
    blur = Blur(T=6, std_max=4.0, sigma=0.1).double()
    g = torch.Generator().manual_seed(0)
    x0 = data_for(blur, g)
    x_T = blur(x0, torch.full((3,), 6), blur.sample_noise(x0, g))
    ddpm = DDPM()(blur, lambda x, t: x0, x_T, generator=torch.Generator().manual_seed(3))
    naive = Sampler(Baseline())(blur, lambda x, t: x0, x_T, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ddpm, naive, rtol=0, atol=1e-12)
    with pytest.raises(UdmError, match="variance='posterior' does not apply to Blur.*knows only \\['blend'\\]"):
        DDPM(variance="posterior").check(blur)


def test_out_of_range_settings_are_refused_when_built():
    with pytest.raises(UdmError, match=r"eta must lie in \[0, 1\]"):
        Mixed(eta=3.0)
    with pytest.raises(UdmError, match="variance='beta' does not apply to VarianceExploding"):
        Sampler(Mixed(eta=1.0, variance="beta")).check(build_process("ve"))
    with pytest.raises(UdmError, match="steps must lie in 1..40"):
        DDIM(steps=41).timesteps(build_process("gaussian"))


class RhoGrid(Sampler):
    """A user's sampler in one class: the inverse step at the times of a Karras-like rho grid (for the test)."""

    def __init__(self, steps: int = 4, rho: float = 7.0):
        from udm.samplers import Explicit, Inverse

        super().__init__(Inverse(), grid=Explicit(sorted({max(1, round(40 * (i / steps) ** rho)) for i in range(1, steps + 1)}, reverse=True)))


def test_a_new_sampler_is_one_class_and_one_yaml(tmp_path):
    (tmp_path / "sampler").mkdir()
    (tmp_path / "sampler" / "rho_grid.yaml").write_text("_target_: tests.test_contract.RhoGrid\nsteps: 5\nrho: 3.0\n")
    cfg = compose_train(f"hydra.searchpath=[file://{tmp_path}]", "sampler=rho_grid", "process=gaussian", "process.T=40")
    process, sampler = instantiate(cfg.process).double(), instantiate(cfg.sampler)
    assert sampler.timesteps(process) == [40, 20, 9, 3, 1]
    g = torch.Generator().manual_seed(0)
    x0 = data_for(process, g)
    x_T = process(x0, torch.full((3,), 40), process.sample_noise(x0, g))
    torch.testing.assert_close(sampler(process, oracle(process, x0), x_T), x0, rtol=0, atol=1e-9)
