"""nelbo: the negative ELBO per token on held-out texts, for the token processes that declare one
(capabilities.likelihood): [MASK] (udm.metrics.likelihood.token_nelbo) and uniform-state tokens
(udm.metrics.uniform_likelihood.uniform_nelbo); conf/metric/nelbo.yaml."""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row
from udm.metrics.likelihood import token_nelbo
from udm.metrics.uniform_likelihood import uniform_nelbo

BOUNDS = {"token nelbo": token_nelbo, "uniform nelbo": uniform_nelbo}  # a process's declared likelihood -> its bound


class TokenNELBO(Metric):
    """nelbo_per_token (nats) and its standard error over texts, nelbo_sem, on the first `samples` held-out texts;
    those holding characters the training text lacks ([UNK]) are left out and counted in nelbo_skipped. The bound is
    the one the process declares (BOUNDS)."""

    columns = ("nelbo_per_token", "nelbo_sem", "nelbo_texts", "nelbo_skipped")
    table = (Row("nelbo_per_token", "NELBO/token", "{:.3f}",
                 note="± {nelbo_sem:.3f} nats, {nelbo_texts} held-out texts ({nelbo_skipped} with unseen characters left out)"),)
    order = 50

    def __init__(self, samples: int = 256):
        self.samples = int(samples)

    def why_not(self, model, context: Context) -> str | None:
        if model.process.capabilities.likelihood not in BOUNDS:
            return (f"the token negative ELBO applies to the [MASK] (absorbing) and uniform-state token processes; "
                    f"this checkpoint's process is {model.process.describe()}")
        if self.samples < 1:
            return "nelbo_samples=0 turns the negative ELBO off; set nelbo_samples to a positive number of held-out texts"
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        process, net, device = model.process, model.net, model.device
        bound = BOUNDS[process.capabilities.likelihood]
        x0 = context.data.test[: self.samples]
        unseen = process.special_mask.cpu()[x0].any(1)  # characters missing from the training text became [UNK]
        if unseen.all():
            raise UdmError(f"all {len(x0)} held-out texts hold characters the tokenizer does not know; no negative ELBO to compute")
        generator = torch.Generator(device).manual_seed(context.seed)
        nelbo = torch.cat([bound(process, net, batch.to(device), generator=generator).cpu()
                           for batch in x0[~unseen].split(context.batch_size)])
        sem = float(nelbo.std() / len(nelbo) ** 0.5) if len(nelbo) > 1 else None
        return {"nelbo_per_token": float(nelbo.mean()), "nelbo_sem": sem, "nelbo_texts": len(nelbo),
                "nelbo_skipped": int(unseen.sum())}
