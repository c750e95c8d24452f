"""Langevin dynamics on the process's score: the predictor-corrector's corrector (Song et al. 2021, alg. 4)
and SMLD's annealed Langevin sampler (Song & Ermon 2019, alg. 1)."""

from __future__ import annotations

import torch
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.processes.capabilities import require
from udm.samplers.grids import Uniform
from udm.samplers.loop import Step


class Langevin:
    """`steps` corrector steps x + e grad + sqrt(2e) z after every reverse step that does not end at t = 0,
    with e = 2 (snr |z| / |grad|)^2. The norms are per-sample norms averaged over the batch, as in the
    paper's code: a per-sample ratio is unstable in low dimension, where |grad| of one sample can be ~0."""

    def __init__(self, steps: int = 1, snr: float = 0.16):
        if steps < 1 or snr <= 0:
            raise UdmError(f"the Langevin corrector needs steps >= 1 and snr > 0, got steps={steps}, snr={snr}")
        self.steps, self.snr = int(steps), float(snr)

    def check(self, process) -> None:
        require(process, "score", "the Langevin corrector", "use a Gaussian (VP) or VE process")

    def __call__(self, process, model, x: Tensor, s: Tensor, generator=None, cond=None) -> Tensor:
        for _ in range(self.steps):
            grad = process.score(process.predict(model, x, s, cond), x, s)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            grad_norm, z_norm = grad.flatten(1).norm(dim=1).mean(), z.flatten(1).norm(dim=1).mean()
            step = 2 * (self.snr * z_norm / grad_norm.clamp(min=1e-12)) ** 2
            x = x + step * grad + (2 * step).sqrt() * z
        return x


class AnnealedLangevin:
    """Annealed Langevin dynamics (Song & Ermon 2019, alg. 1) over the process's noise levels.

    At each level t (largest first), `steps_per_level` steps x <- x + alpha/2 grad + sqrt(alpha) z
    with alpha = step_lr * (sigma_t / sigma_min)^2, sigma_min the last level visited. With
    `denoise`, the result is the x0 prediction at the last level (Tweedie's formula), which
    removes the sigma_min noise the chain ends with. Called like every sampler.
    """

    def __init__(self, steps: int | None = None, steps_per_level: int = 10, step_lr: float = 2e-5, denoise: bool = True):
        if steps_per_level < 1 or step_lr <= 0:
            raise UdmError(f"need steps_per_level >= 1 and step_lr > 0, got {steps_per_level}, {step_lr}")
        self.steps, self.steps_per_level, self.step_lr, self.denoise = steps, int(steps_per_level), float(step_lr), denoise

    def check(self, process) -> None:
        require(process, "score", "annealed Langevin dynamics (sampler=langevin)", "use a Gaussian (VP) or VE process")

    def prepare(self, process, model, source=None):
        self.check(process)
        return self

    def guided(self, guidance):
        raise UdmError("annealed Langevin dynamics (sampler=langevin) follows the score and forms no x0_hat to guide; "
                       "use sampler=ddim, ddpm or pc with guidance")

    def timesteps(self, process, t_start: int | None = None) -> list[int]:
        return Uniform()(process, self.steps, t_start)

    @torch.no_grad()
    def __call__(self, process, model, x_T: Tensor, generator=None, t_start=None, cond=None, callback=None, progress=False) -> Tensor:
        self.check(process)
        ts = self.timesteps(process, t_start)
        x, batch = x_T, x_T.shape[0]
        sigma_min = float(process.noise_scale(torch.tensor([ts[-1]], device=x.device)))
        for i, t_int in enumerate(track(ts, description="langevin", disable=not progress, transient=True)):
            t = torch.full((batch,), t_int, dtype=torch.long, device=x.device)
            alpha = self.step_lr * (float(process.noise_scale(t[:1])) / sigma_min) ** 2
            x_t = x
            for _ in range(self.steps_per_level):
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + alpha / 2 * process.score(process.predict(model, x, t, cond), x, t) + alpha**0.5 * z
            if callback is not None:  # the chain stays at level t; x0_hat is not formed between levels
                callback(Step(i, t_int, t_int, x_t, None, x))
        if self.denoise:
            x = process.x0_hat(process.predict(model, x, t, cond), x, t, generator)
        return x
