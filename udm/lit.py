"""One LightningModule for every process and modality.

Training asks the process for its objective on a batch (t ~ U{1..T}, eps ~ q,
x_t = F_t(x0, eps), the loss of the net's raw output); the module knows nothing about
which process it trains. A batch is x0, or (x0, cond) from data modules that yield a condition. Validation logs the held-out loss and a grid of samples drawn with the
configured sampler (under EMA weights when the EMAWeightAveraging callback is on).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from udm.checkpoint import CHECKPOINT_KEY, recipe_modality
from udm.conditioning import drop_condition
from udm.grid import as_grid_array, save_grid
from udm.processes import ForwardProcess


def split_batch(batch) -> tuple[Tensor, Any]:
    """(x0, cond) of a batch: a bare tensor is unconditional data, a pair carries its condition."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a batch is x0 or (x0, cond); got a sequence of {len(batch)} items")
        return batch[0], batch[1]
    return batch, None


class DiffusionModule(L.LightningModule):
    """Trains `net` as the x0-predictor of `process`.

    optimizer / scheduler: partials taking parameters / the optimizer (Hydra `_partial_`).
    sampler: a udm sampler (udm.samplers), called as sampler(process, net, x_T, generator=...) for the validation grid.
    recipe: the plain config needed to rebuild process and net; stored in every checkpoint.
    condition_dropout: the probability that a training sample's condition is replaced by the null one, so
    one model is both conditional and unconditional (classifier-free guidance); no effect on unconditional data.
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
        condition_dropout: float = 0.0,
    ):
        super().__init__()
        self.process, self.net = process, net
        if not process.trains_net:  # e.g. the encoding model's autoencoder stage
            net.requires_grad_(False)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.sampler, self.val_samples, self.sample_seed = sampler, val_samples, sample_seed
        self.recipe = recipe or {}
        if not 0 <= condition_dropout <= 1:
            raise ValueError(f"condition_dropout is a probability in [0, 1], got {condition_dropout}")
        self.condition_dropout = condition_dropout
        self.last_samples: Tensor | None = None

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        return self.process.predict(self.net, x_t, t, cond)

    def diffusion_loss(self, x0: Tensor, generator: torch.Generator | None = None, cond=None) -> Tensor:
        return self.process.training_loss(self.net, x0, generator, cond)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x0, cond = split_batch(batch)
        loss = self.diffusion_loss(x0, cond=drop_condition(cond, self.condition_dropout))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        x0, cond = split_batch(batch)
        if batch_idx == 0 and self.val_samples:  # inside the epoch, so under the EMA weights the callback swapped in
            self.log_samples(x0[: self.val_samples])
        # the same t and eps every validation, so the curve reflects the weights alone
        generator = torch.Generator(x0.device).manual_seed(self.sample_seed + batch_idx)
        loss = self.diffusion_loss(x0, generator, cond)
        self.log("val/loss", loss, prog_bar=True, batch_size=x0.shape[0], sync_dist=True)
        return loss

    def log_samples(self, reference: Tensor) -> None:
        if self.sampler is None or self.trainer.sanity_checking:
            return
        self.last_samples = samples = self.generate(reference)
        datamodule = self.trainer.datamodule
        modality = recipe_modality(self.recipe) if self.recipe else None
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if modality == "image" and hasattr(experiment, "add_image"):
                experiment.add_image("samples", as_grid_array(samples), self.global_step)
            elif modality == "text" and hasattr(experiment, "add_text"):
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
