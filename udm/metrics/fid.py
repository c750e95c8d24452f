"""FID and KID through torchmetrics, in the feature space of udm's own classifier.

torchmetrics' FrechetInceptionDistance and KernelInceptionDistance accept any nn.Module as
`feature`: it receives the images exactly as passed to `update` (its `normalize` flag and
uint8 expectation apply only to the built-in Inception) and must return [B, num_features];
FID reads the width from the module's `num_features` attribute. Here the module is the
penultimate layer of the classifier that `udm.jobs.features` trains on the data, kept in
eval mode. Images are [N, C, H, W] in [-1, 1]; both sets are rounded to 8-bit levels first,
as a saved PNG would hold them, so that generated images are scored as a viewer sees them.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from udm.errors import UdmError


class Penultimate(nn.Module):
    """The classifier's feature layer as torchmetrics' `feature` module: always in eval mode, no gradients."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = int(classifier.num_features)

    def train(self, mode: bool = True) -> Penultimate:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x)


def as_8bit(images: Tensor) -> Tensor:
    """[-1, 1] images rounded to the 256 levels of a saved image (values outside are clipped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def check_images(real: Tensor, fake: Tensor) -> None:
    for name, x in (("real", real), ("generated", fake)):
        if x.dim() != 4 or not x.is_floating_point():
            raise UdmError(f"FID needs float images [N, C, H, W] in [-1, 1]; the {name} ones are {x.dtype} {list(x.shape)}")
        if len(x) < 2:
            raise UdmError(f"FID needs at least 2 {name} images, got {len(x)}")
    if real.shape[1:] != fake.shape[1:]:
        raise UdmError(f"real images are {list(real.shape[1:])} but generated ones {list(fake.shape[1:])}")


def feed(metric, images: Tensor, real: bool, batch_size: int) -> None:
    device = next(metric.parameters()).device
    for batch in images.split(batch_size):
        metric.update(as_8bit(batch).to(device), real=real)


def frechet_distance(real: Tensor, fake: Tensor, classifier: nn.Module, batch_size: int = 256) -> float:
    """FID between real and generated images [N, C, H, W] in [-1, 1] on the classifier's features."""
    check_images(real, fake)
    device = next(classifier.parameters()).device
    # sync_on_compute=False: one process scores all samples (udm-eval gathers them on rank 0 first)
    metric = FrechetInceptionDistance(feature=Penultimate(classifier), sync_on_compute=False).to(device)
    feed(metric, real, True, batch_size)
    feed(metric, fake, False, batch_size)
    return float(metric.compute())


def kernel_distance(real: Tensor, fake: Tensor, classifier: nn.Module, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0, batch_size: int = 256) -> tuple[float, float, int]:
    """KID (mean, std over `subsets` random subsets) and the subset size used: at most the smaller set's size."""
    check_images(real, fake)
    subset_size = min(subset_size, len(real), len(fake))
    device = next(classifier.parameters()).device
    with warnings.catch_warnings():  # it warns that it keeps every feature vector: a few thousand of 128 floats here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=Penultimate(classifier), subsets=subsets, subset_size=subset_size,
                                         sync_on_compute=False).to(device)
    feed(metric, real, True, batch_size)
    feed(metric, fake, False, batch_size)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), subset_size
