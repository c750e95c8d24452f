"""One LightningModule for every process and modality.

Training asks the process for its objective on a batch (t ~ U{1..T}, eps ~ q,
x_t = F_t(x0, eps), the loss of the net's raw output); the module knows nothing about
which process it trains. Validation logs the held-out loss and a grid of samples drawn with the
configured sampler (under EMA weights when the EMAWeightAveraging callback is on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from udm.grid import as_grid_array, save_grid
from udm.processes import ForwardProcess

CHECKPOINT_KEY = "udm"


class DiffusionModule(L.LightningModule):
    """Trains `net` as the x0-predictor of `process`.

    optimizer / scheduler: partials taking parameters / the optimizer (Hydra `_partial_`).
    sampler: a partial of `udm.sample` (process, model, x_T, generator=...) for the validation grid.
    recipe: the plain config needed to rebuild process and net; stored in every checkpoint.
    """

    def __init__(
        self,
        process: ForwardProcess,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        sampler: Callable[..., Tensor] | None = None,
        val_samples: int = 16,
        sample_seed: int = 0,
        recipe: dict | None = None,
    ):
        super().__init__()
        self.process, self.net = process, net
        if not getattr(process, "trains_net", True):  # e.g. the encoding model's autoencoder stage
            net.requires_grad_(False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sampler, self.val_samples, self.sample_seed = sampler, val_samples, sample_seed
        self.recipe = recipe or {}
        self.last_samples: Tensor | None = None

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(x_t, t)

    def diffusion_loss(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.process.training_loss(self.net, x0, generator)

    def training_step(self, x0: Tensor, batch_idx: int) -> Tensor:
        loss = self.diffusion_loss(x0)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, x0: Tensor, batch_idx: int) -> Tensor:
        if batch_idx == 0 and self.val_samples:  # inside the epoch, so under the EMA weights the callback swapped in
            self.log_samples(x0[: self.val_samples])
        # the same t and eps every validation, so the curve reflects the weights alone
        generator = torch.Generator(x0.device).manual_seed(self.sample_seed + batch_idx)
        loss = self.diffusion_loss(x0, generator)
        self.log("val/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def log_samples(self, reference: Tensor) -> None:
        if self.sampler is None or self.trainer.sanity_checking:
            return
        self.last_samples = samples = self.generate(reference)
        datamodule = self.trainer.datamodule
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if samples.dim() == 4 and hasattr(experiment, "add_image"):
                experiment.add_image("samples", as_grid_array(samples), self.global_step)
            elif hasattr(datamodule, "decode") and hasattr(experiment, "add_text"):
                experiment.add_text("samples", "\n\n".join(datamodule.decode(samples)), self.global_step)
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "samples" / f"step{self.global_step:06d}"
            if datamodule is not None and hasattr(datamodule, "save_samples"):
                datamodule.save_samples(samples, path)
            else:
                save_grid(samples, path.with_suffix(".png"))

    @torch.no_grad()
    def generate(self, reference: Tensor, seed: int | None = None) -> Tensor:
        """Samples, one per reference x0 (which fixes shape and, for data-dependent priors, x_T)."""
        generator = torch.Generator(reference.device).manual_seed(self.sample_seed if seed is None else seed)
        x_T = self.process.prior(reference, generator)
        return self.sampler(self.process, self.net, x_T, generator=generator)

    def configure_optimizers(self):
        # the net's and, for processes with trainable parts (the encoding model's E and D), the process's
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.recipe
