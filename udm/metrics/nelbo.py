"""nelbo: the negative ELBO per token on held-out texts, for the [MASK] (absorbing) token process
(udm.metrics.likelihood.token_nelbo; conf/metric/nelbo.yaml)."""

from __future__ import annotations

import torch
from torch import Tensor

from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row


class TokenNELBO(Metric):
    """nelbo_per_token (nats) on the first `samples` held-out texts; those holding characters the training text
    lacks ([UNK]) are left out and counted in nelbo_skipped."""

    columns = ("nelbo_per_token", "nelbo_texts", "nelbo_skipped")
    table = (Row("nelbo_per_token", "NELBO/token", "{:.3f}",
                 note="nats, {nelbo_texts} held-out texts ({nelbo_skipped} with unseen characters left out)"),)
    order = 50

    def __init__(self, samples: int = 256):
        self.samples = int(samples)

    def why_not(self, model, context: Context) -> str | None:
        if model.process.capabilities.likelihood != "token nelbo":
            return (f"the token negative ELBO applies to the [MASK] (absorbing) token process; "
                    f"this checkpoint's process is {model.process.describe()}")
        if self.samples < 1:
            return "nelbo_samples=0 turns the negative ELBO off; set nelbo_samples to a positive number of held-out texts"
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        from udm.metrics.likelihood import token_nelbo

        process, net, device = model.process, model.net, model.device
        x0 = context.data.test[: self.samples]
        unseen = process.special_mask.cpu()[x0].any(1)  # characters missing from the training text became [UNK]
        if unseen.all():
            raise UdmError(f"all {len(x0)} held-out texts hold characters the tokenizer does not know; no negative ELBO to compute")
        generator = torch.Generator(device).manual_seed(context.seed)
        nelbo = torch.cat([token_nelbo(process, net, batch.to(device), generator=generator).cpu()
                           for batch in x0[~unseen].split(context.batch_size)])
        return {"nelbo_per_token": float(nelbo.mean()), "nelbo_texts": len(nelbo), "nelbo_skipped": int(unseen.sum())}
