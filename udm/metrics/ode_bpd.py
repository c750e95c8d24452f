"""ode_bpd: bits/dim of held-out images under the probability-flow ODE of an affine Gaussian process, any schedule
(VP, VE/EDM, flow; udm.metrics.ode_likelihood.ode_bits_per_dim; conf/metric/ode_bpd.yaml). Off unless
ode_bpd_samples > 0: each image costs a few hundred net evaluations (and a backward pass per evaluation)."""

from __future__ import annotations

import time

import torch
from rich.progress import track
from torch import Tensor

from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row
from udm.metrics.bpd import pixel_levels
from udm.metrics.ode_likelihood import DIVERGENCES, PROBES, check_process


class OdeBitsPerDim(Metric):
    """bits/dim of the first `num_samples` held-out images by the probability-flow ODE (torchdiffeq's `method`,
    rtol/atol), from u = u_eps to 1, with the divergence `exact` (D backward passes per evaluation: small images) or
    `hutchinson` (one `probe` per image, rademacher or gaussian: an unbiased estimate); uniform dequantization over
    the `levels` pixel levels (None: read off the held-out images) unless dequantize=false."""

    columns = ("ode_bpd", "ode_bpd_sem", "ode_bpd_images", "ode_bpd_levels", "ode_bpd_divergence", "ode_bpd_nfe",
               "ode_bpd_seconds")
    table = (Row("ode_bpd", "bits/dim (ODE)", "{:.3f}", compare_label="ODE bpd",
                 note="± {ode_bpd_sem:.3f}, {ode_bpd_images} held-out images, {ode_bpd_levels} levels, "
                      "{ode_bpd_divergence} divergence, {ode_bpd_nfe:.0f} NFE/batch, {ode_bpd_seconds:.0f}s"),)
    order = 31

    def __init__(self, num_samples: int = 0, batch_size: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 divergence: str = "hutchinson", probe: str = "rademacher", u_eps: float = 1e-5,
                 method: str = "dopri5", levels: int | None = None, dequantize: bool = True):
        if divergence not in DIVERGENCES:
            raise UdmError(f"ode_bpd: unknown divergence {divergence!r}; choose one of {list(DIVERGENCES)}")
        if probe not in PROBES:
            raise UdmError(f"ode_bpd: unknown probe {probe!r}; choose one of {list(PROBES)}")
        self.num_samples, self.batch_size = int(num_samples), batch_size
        self.rtol, self.atol, self.u_eps, self.method = float(rtol), float(atol), float(u_eps), method
        self.divergence, self.probe, self.levels, self.dequantize = divergence, probe, levels, bool(dequantize)

    def why_not(self, model, context: Context) -> str | None:
        try:
            check_process(model.process, "bits/dim by the probability-flow ODE (ode_bpd)")
        except UdmError as e:
            return str(e)
        if model.modality != "image":
            return f"ode_bpd scores images (pixel levels in [-1, 1]); this checkpoint holds {model.modality}"
        if self.num_samples < 1:
            return ("ode_bpd_samples=0 turns the ODE bits/dim off (the default: a few hundred net calls per image); "
                    "set ode_bpd_samples to a positive number of held-out images")
        if pixel_levels(context.data, self.num_samples, self.levels) is None:
            return ("ode_bpd needs images on a grid of pixel levels, and the held-out images are not on one "
                    "(resized?); set +metric.ode_bpd.levels to the data's number of levels")
        return None

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        from udm.metrics.ode_likelihood import ode_bits_per_dim

        process, net, device = model.process, model.net, model.device
        x0, levels = context.data.test[: self.num_samples], pixel_levels(context.data, self.num_samples, self.levels)
        generator = torch.Generator(device).manual_seed(context.seed)
        batches = x0.split(int(self.batch_size or context.batch_size))
        start, results, nfe = time.perf_counter(), [], []
        for batch in track(batches, description="bits/dim (ODE)", disable=not context.progress, transient=True):
            bpd, solve = ode_bits_per_dim(process, net, batch.to(device), levels=levels, dequantize=self.dequantize,
                                          generator=generator, divergence=self.divergence, probe=self.probe,
                                          rtol=self.rtol, atol=self.atol, u_eps=self.u_eps, method=self.method,
                                          details=True)
            results.append(bpd.cpu())
            nfe.append(solve.nfe)
        bpd = torch.cat(results)
        sem = float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else None
        return {"ode_bpd": float(bpd.mean()), "ode_bpd_sem": sem, "ode_bpd_images": len(x0), "ode_bpd_levels": levels,
                "ode_bpd_divergence": self.divergence, "ode_bpd_nfe": sum(nfe) / len(nfe),
                "ode_bpd_seconds": time.perf_counter() - start}
