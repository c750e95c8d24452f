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

from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row, fmt


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


@torch.no_grad()
def on_saved_pixels(fn, images: Tensor, batch_size: int, device) -> Tensor:
    """fn (the classifier, or its feature layer) over the images as a saved PNG shows them, batch by batch on
    `device`; the results in float32 on the CPU."""
    return torch.cat([fn(as_8bit(batch).to(device)).float().cpu() for batch in images.split(batch_size)])


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
    from torchmetrics.image.fid import FrechetInceptionDistance  # here: udm-compare imports this file for FID's columns

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
    from torchmetrics.image.kid import KernelInceptionDistance

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


# -- the metrics fid and kid (conf/metric/fid.yaml, kid.yaml; KID's class is in udm/metrics/kid.py) --------------


def has_labels(model, context: Context) -> bool:
    """Whether the FID feature extractor exists or can be trained: a cached one, or class labels to train one."""
    from udm.jobs.features import cache_path

    if cache_path(model.recipe["data"], context.cfg.get("cache_dir")).is_file():
        return True
    return hasattr(context.data, "load_labels") and context.data.load_labels() is not None


def extractor(model, context: Context) -> tuple[nn.Module, dict]:
    """The data's feature extractor on the model's device (trained when not cached), loaded once per evaluation."""
    if "extractor" not in context.shared:
        from udm.jobs.features import ensure_extractor

        context.shared["extractor"] = ensure_extractor(model.recipe["data"], context.cfg.extractor, context.cfg.get("cache_dir"),
                                                       context.device, progress=context.progress, who="udm-eval")
    return context.shared["extractor"]


EXTRACTOR_COLUMNS = ("fid_real_images", "fid_extractor", "fid_extractor_accuracy")
EXTRACTOR_NOTE = "extractor accuracy {fid_extractor_accuracy:.2%}, {fid_real_images} held-out images"


class FeatureMetric(Metric):
    """A distance between the samples and every held-out image of an image checkpoint, in the feature space of
    udm's own classifier (udm-features; trained on the fly when not cached, which takes class labels)."""

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "image":
            return f"{self.name} applies to image checkpoints; this one holds {model.modality} data"
        if not has_labels(model, context):
            return (f"{self.name} needs the feature extractor, a classifier trained on labelled images, and "
                    f"{type(context.data).__name__} data has no class labels (and no extractor is cached for it)")
        return None

    def check(self, model, context: Context) -> None:
        held_out = len(context.data.test)
        if context.n > held_out:
            raise UdmError(f"the held-out split of {type(context.data).__name__} has {held_out} images, fewer than n={context.n}; "
                           f"FID/KID compare the samples with the held-out images, so use n<={held_out}")

    def features(self, model, context: Context) -> tuple[nn.Module, dict]:
        classifier, info = extractor(model, context)
        return classifier, {"fid_real_images": len(context.data.test), "fid_extractor": info["id"],
                            "fid_extractor_accuracy": info["test_accuracy"]}

    @classmethod
    def compare_note(cls, results: list[dict]) -> str | None:
        """The feature extractor, once: FIDs compare only under one extractor id."""
        seen: dict = {}
        for r in results:
            if "fid_extractor" in r:
                seen.setdefault(r["fid_extractor"], r)
        if not seen:
            return None
        parts = [f"`{id_}` (held-out accuracy {fmt(r.get('fid_extractor_accuracy'), '{:.1%}')}, "
                 f"{fmt(r.get('fid_real_images'))} real images)" for id_, r in seen.items()]
        note = "FID and KID are computed on the features of udm's classifier " + "; ".join(parts) + "."
        if len(seen) > 1:
            note += " **These are different extractors: FIDs compare only between rows of the same one.**"
        return note


class FID(FeatureMetric):
    """fid: Frechet distance of the samples' features to the held-out images' (frechet_distance)."""

    columns = (*EXTRACTOR_COLUMNS, "fid")
    table = (Row("fid", "FID", "{:.3f}", note=EXTRACTOR_NOTE, compare_fmt="{:.2f}"),)
    order = 10

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        classifier, out = self.features(model, context)
        out["fid"] = frechet_distance(context.data.test, samples, classifier)
        return out
