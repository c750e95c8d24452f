"""The training loop of udm's own measuring nets (the FID feature extractor, the fluency judge): AdamW under a
one-cycle learning rate over shuffled mini-batches of an in-memory dataset, with a progress bar. The diffusion
model itself trains through Lightning (udm.lit); these nets are small, trained once per dataset and cached, and
need neither checkpoints nor loggers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from rich.progress import Progress
from torch import Tensor, nn


def fit_epochs(net: nn.Module, n: int, batch_loss: Callable[[Tensor], Tensor], epochs: int, batch_size: int, lr: float,
               weight_decay: float, generator: torch.Generator, what: str, shown: Callable[[Tensor], str],
               pct_start: float = 0.3, progress: bool = True) -> None:
    """`epochs` passes over n examples in batches of indices (reshuffled from `generator` every epoch, which
    batch_loss may draw from too); batch_loss(idx) is the mean loss of a batch, `shown(loss)` what the progress
    bar says of it."""
    device = next(net.parameters()).device
    batches = math.ceil(n / batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * batches, pct_start=pct_start)
    net.train()
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"training {what}", total=epochs * batches)
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=generator).split(batch_size):
                loss = batch_loss(idx.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if progress:  # reading the loss syncs with the device: only for a bar someone sees
                    bar.update(task, advance=1, description=f"training {what} ({shown(loss)})")
    net.eval()
