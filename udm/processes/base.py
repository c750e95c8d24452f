"""The forward process of the unified model (DESIGN.md section 1).

    x_t = F_t(x0, eps),   eps ~ q(eps),   t = 0..T,   x_0 = x0

A process supplies F_t, its inverse in eps where one exists, q(eps), the prior
x_T, how the network's raw output becomes x0_hat, and the training loss. The
one reverse loop in `udm.samplers` needs nothing else.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor, nn

from udm.processes.capabilities import Capabilities


class ForwardProcess(nn.Module, abc.ABC):
    """Abstract x_t = F_t(x0, eps). Time t is a LongTensor [B] with 0 = data, T = prior.

    Subclasses set `T` and implement `forward` (F_t), `sample_noise` (q), `x0_hat`
    and `loss`; invertible ones also implement `inverse`. What a process supports is
    declared once, in `capabilities` (a class attribute, or a property where it depends
    on the settings); samplers and metrics check it when they are built.
    Schedules live in non-persistent buffers so they follow the model's device
    but never enter checkpoints: they are rebuilt from the config.
    """

    T: int
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def forward(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """F_t(x0, eps): the corrupted x_t, shaped like x0."""

    def inverse(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """F_t^{-1}(x0, x_t): the eps with F_t(x0, eps) = x_t."""
        raise NotImplementedError(f"{type(self).__name__} has no inverse in eps; use the baseline step (sampler=naive)")

    @abc.abstractmethod
    def sample_noise(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """eps ~ q(eps), for a batch shaped like x0."""

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_T ~ p(x_T) for a batch shaped like the reference data x0.

        Default: F_T(x0, eps) with fresh eps, which is right for processes whose
        x_T still depends on the data (e.g. blur); processes with a data-free
        prior override it.
        """
        t = torch.full((x0.shape[0],), self.T, dtype=torch.long, device=x0.device)
        return self(x0, t, self.sample_noise(x0, generator))

    @abc.abstractmethod
    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The prediction of x0 from the network's raw output `out` at (x_t, t)."""

    @abc.abstractmethod
    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Scalar training loss of the raw output `out` for the pair (x0, x_t = F_t(x0, eps))."""

    def training_loss(self, net: nn.Module, x0: Tensor, generator: torch.Generator | None = None, cond=None) -> Tensor:
        """The training objective for a batch of data: t ~ U{1..T}, eps ~ q, x_t = F_t(x0, eps), loss(net(x_t, t, cond)).

        Processes with trainable parts (the encoding model) override it.
        """
        t = self.sample_t(x0.shape[0], x0.device, generator)
        eps = self.sample_noise(x0, generator)
        x_t = self(x0, t, eps)
        return self.loss(self.predict(net, x_t, t, cond), x0, x_t, t, eps)

    def predict(self, model: Model, x_t: Tensor, t: Tensor, cond=None):
        """The net's raw output at (x_t, t): what every sampler, metric and the training loss call. Processes that
        show the net a rescaled input (the affine Gaussian's c_in) override it."""
        return predict(model, x_t, t, cond)

    def guide(self, out_c: Tensor, out_u: Tensor, w: float, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None):
        """Classifier-free guidance on the prediction: x0_w = x0_u + w (x0_c - x0_u) from the conditional and
        unconditional raw outputs (udm.samplers.Guidance). Processes whose x0_hat is not a real-valued point
        (tokens: a draw from logits; latents: a decoded code) mix before that step instead."""
        x0_c, x0_u = self.x0_hat(out_c, x_t, t, generator), self.x0_hat(out_u, x_t, t, generator)
        return torch.lerp(x0_u, x0_c, w)  # = x0_u + w (x0_c - x0_u), exactly x0_u at w = 0 and x0_c at w = 1

    def noise_ratio(self, t: Tensor, s: Tensor, eta: float, variance: str = "blend") -> tuple[Tensor, Tensor]:
        """(sqrt(1 - r^2), r) of the mixed step x_s = F_s(x0_hat, sqrt(1 - r^2) eps_hat + r z).

        The generic choice, variance 'blend', is r = eta: the noise is a blend of eps_hat and fresh noise,
        eta = 0 the inverse step, eta = 1 the baseline. Gaussian processes override it with the DDPM/DDIM
        variances.
        """
        if variance not in self.capabilities.variances:
            raise ValueError(f"{self.describe()} knows the variances {list(self.capabilities.variances)}, not {variance!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1] for {type(self).__name__}, got {eta}")
        r = torch.full(t.shape, float(eta), device=t.device)
        return (1 - r**2).sqrt(), r

    def steps_without_change(self, ts: list[int]) -> list[bool]:
        """For the loop's steps t_1 > ... > t_n (then 0): whether the step t_i -> t_{i+1} leaves x as it is,
        so the loop may skip the network there (masked diffusion with more steps than tokens). Default: none."""
        return [False] * len(ts)

    @property
    def trains_net(self) -> bool:
        """Whether training updates the net (False for a stage that trains the process's own parts alone)."""
        return True

    def parts_checkpoint(self) -> str | None:
        """A checkpoint the process's trainable parts start from (the encoding model's stage one), which the
        train job reads and hands to `load_parts`; processes never read files themselves. Default: none."""
        return None

    def load_parts(self, state_dict: dict[str, Tensor], source: str = "") -> None:
        raise NotImplementedError(f"{self.describe()} has no trainable parts to load")

    def solver_time(self, t: Tensor) -> Tensor:
        """lambda(t), the time variable multistep solvers extrapolate x0_hat in (increasing toward the data).

        Only ratios of its steps matter. Default: -t; Gaussian processes use log(a_t / b_t)
        (DPM-Solver++'s half log-SNR), variance-exploding ones -log sigma_t.
        """
        return -t.double()

    def sample_t(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """Training times, uniform on 1..T."""
        return torch.randint(1, self.T + 1, (n,), device=device, generator=generator)

    def describe(self) -> str:
        return f"{type(self).__name__}(T={self.T})"


def per_sample(coef: Tensor, x: Tensor) -> Tensor:
    """A per-sample coefficient [B] shaped [B, 1, ..., 1] to broadcast against x [B, ...], in x's dtype."""
    return coef.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


Model = Callable[..., Tensor]  # model(x_t, t) or model(x_t, t, cond): the network's raw output


def predict(model: Model, x_t: Tensor, t: Tensor, cond=None):
    """The network's raw output at (x_t, t): `model(x_t, t, cond)`, or `model(x_t, t)` when there is no condition,
    so unconditional callables with two arguments keep working."""
    return model(x_t, t) if cond is None else model(x_t, t, cond)
