"""bpd: bits/dim of the variational bound on held-out images, for Gaussian processes of images
(udm.metrics.likelihood.bits_per_dim; conf/metric/bpd.yaml)."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from udm.metrics.base import Context, Metric, Row


def pixel_levels(data, samples: int, levels: int | None = None) -> int | None:
    """`levels` when set, else the regular grid over [-1, 1] the first `samples` held-out images lie on (256 for
    8-bit pixels, 17 for scikit-learn's digits); None when they are off-grid."""
    if levels:
        return int(levels)
    values = torch.unique(data.test[:samples].double())
    if len(values) < 2 or values.min() < -1 - 1e-6 or values.max() > 1 + 1e-6:
        return None
    levels = round(2 / float(values.diff().min())) + 1
    grid = (values + 1) * (levels - 1) / 2
    return levels if levels <= 65536 and (grid - grid.round()).abs().max() < 1e-3 else None


class BitsPerDim(Metric):
    """bits/dim on the first `samples` held-out images (T network evaluations each), with a discretized decoder of
    `levels` pixel levels (None: read off the held-out images) and reverse-step variances `variance` (beta: DDPM's
    NLL, posterior, or analytic: Analytic-DPM's, estimated once per checkpoint)."""

    columns = ("bpd", "bpd_sem", "bpd_images", "bpd_levels", "bpd_variance", "bpd_seconds")
    table = (Row("bpd", "bits/dim", "{:.3f}",
                 note="± {bpd_sem:.3f}, {bpd_images} held-out images, {bpd_levels} levels, {bpd_seconds:.0f}s"),)
    order = 30

    def __init__(self, samples: int = 64, levels: int | None = None, variance: str = "beta"):
        self.samples, self.levels, self.variance = int(samples), levels, variance

    def pixel_levels(self, data) -> int | None:
        return pixel_levels(data, self.samples, self.levels)

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "image" or model.process.capabilities.likelihood != "bits/dim":
            return (f"bits/dim applies to Gaussian processes (udm.processes.Gaussian) of images; "
                    f"this checkpoint's process is {model.process.describe()}")
        if self.samples < 1:
            return "bpd_samples=0 turns bits/dim off; set bpd_samples to a positive number of held-out images"
        if self.pixel_levels(context.data) is None:
            return ("bits/dim needs images on a grid of pixel levels, and the held-out images are not on one "
                    "(resized?); set bpd_levels to the data's number of levels")
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        from udm.analytic import model_eps_moments
        from udm.metrics.likelihood import bits_per_dim

        process, net, device = model.process, model.net, model.device
        gamma = (model_eps_moments(process, net, model.checkpoint_path, model.recipe, context.progress)
                 if self.variance == "analytic" else None)
        x0, levels = context.data.test[: self.samples], self.pixel_levels(context.data)
        generator = torch.Generator(device).manual_seed(context.seed)
        start = time.perf_counter()
        bpd = torch.cat([bits_per_dim(process, net, batch.to(device), generator=generator, progress=context.progress,
                                      variance=self.variance, levels=levels, gamma=gamma).cpu()
                         for batch in x0.split(context.batch_size)])
        sem = float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else None
        return {"bpd": float(bpd.mean()), "bpd_sem": sem, "bpd_images": len(x0), "bpd_levels": levels,
                "bpd_variance": self.variance, "bpd_seconds": time.perf_counter() - start}
