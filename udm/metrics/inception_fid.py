"""fid_inception: FID the way papers report it (conf/metric/fid_inception.yaml; only when named).

    udm-eval ckpt=RUN n=50000 "metrics=[fid_inception]" [inception_weights=PATH]

The protocol, exactly: the network is the FID Inception-v3 (the TensorFlow graph of 2015-12-05 behind the
original FID code, as torch-fidelity, torchmetrics and pytorch-fid use it; udm.metrics.inception), with the weights
file weights-inception-2015-12-05-6726825d.pth read from a local file only: inception_weights=PATH, else
the torch hub cache where torchmetrics would have downloaded it ($TORCH_HOME/hub/checkpoints/, by default
~/.cache/torch/hub/checkpoints/; pytorch-fid's pt_inception-2015-12-05-6726825d.pth there is found too). Without it
udm-eval stops before sampling with one message giving the URL to fetch it from. Images (floats in [-1, 1]) are
quantized to 8 bits exactly as a saved PNG, round((x + 1) * 127.5) after clipping to [-1, 1], grayscale repeated
to 3 channels; the network resizes the uint8 images to 299 x 299 with TensorFlow 1.x's bilinear resize
(align_corners=False, no antialiasing; the same numbers as torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x),
scales them by (x - 128) / 128 and keeps the 2048-d pool3 features. The reference statistics (mean and covariance of
those features) come from the TRAINING split of the checkpoint's data, its first train_images images
(default 50,000, capped at the split: all of CIFAR-10's training set), and are cached per data config, count and
weights file in <cache_dir>/inception/ (delete the file when the data files change). The Fréchet distance is
torchmetrics' FrechetInceptionDistance over those statistics and the n samples; papers draw n = 50,000 samples
(udm-eval's n, default 500, gives a larger, biased FID: compare FIDs only at one n). The JSON records
fid_inception, the reference images used and the first 8 hex digits of the weights file's sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.progress import track
from torch import Tensor

from udm.checkpoint import load_cached
from udm.errors import UdmError
from udm.metrics.base import Context, Metric, Row, fmt
from udm.metrics.inception import FIDInceptionV3, find_weights, load_inception, to_uint8

FORMAT = "udm-inception-statistics/1"
REFERENCE = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")  # torchmetrics FID's "real" state


def torchmetrics_fid(net: FIDInceptionV3, device):
    from torchmetrics.image.fid import FrechetInceptionDistance  # here: udm-compare imports this file for the columns

    # sync_on_compute=False: one process scores all samples (udm-eval gathers them on rank 0 first)
    return FrechetInceptionDistance(feature=net, sync_on_compute=False).to(device)


def feed(metric, images: Tensor, real: bool, batch_size: int, progress: bool = False) -> None:
    device = next(metric.inception.parameters()).device
    batches = images.split(batch_size)
    what = "Inception features of the " + ("training images" if real else "samples")
    for batch in track(batches, description=what, disable=not progress, transient=True):
        metric.update(to_uint8(batch).to(device), real=real)


def reference_statistics(images: Tensor, net: FIDInceptionV3, batch_size: int = 50, progress: bool = False) -> dict[str, Tensor]:
    """What FID keeps of the reference images [N, C, H, W] in [-1, 1]: the sum of their features, the sum of the
    features' outer products (float64) and N, as torchmetrics' FrechetInceptionDistance states (on the CPU)."""
    metric = torchmetrics_fid(net, next(net.parameters()).device)
    feed(metric, images, True, batch_size, progress)
    return {k: metric.metric_state[k].cpu() for k in REFERENCE}


def frechet_inception_distance(reference: dict[str, Tensor], images: Tensor, net: FIDInceptionV3, batch_size: int = 50,
                               progress: bool = False) -> float:
    """FID of images [N, C, H, W] in [-1, 1] against reference statistics (reference_statistics)."""
    if len(images) < 2:
        raise UdmError(f"FID needs at least 2 samples, got {len(images)}")
    device = next(net.parameters()).device
    metric = torchmetrics_fid(net, device)
    metric.merge_state({**metric.metric_state, **{k: v.to(device) for k, v in reference.items()}})
    feed(metric, images, False, batch_size, progress)
    return float(metric.compute())


def statistics_path(data_cfg: dict, train_images: int, weights_id: str, cache_dir: str | None = None) -> Path:
    """<cache_dir>/inception/<data name>-<hash of the data config>-train<N>-<weights id>.pt"""
    from udm.jobs.features import cache_path

    extractor = cache_path(data_cfg, cache_dir)
    return extractor.parent / "inception" / f"{extractor.stem}-train{train_images}-{weights_id}.pt"


def load_statistics(path: Path) -> dict[str, Tensor]:
    payload = load_cached(path, FORMAT, "the cached Inception statistics", "udm's cached Inception statistics", "delete it")
    return {k: payload[k] for k in REFERENCE}


def weights_id(path: Path) -> str:
    """The first 8 hex digits of the file's sha256: FIDs compare only under one weights file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:8]


class FIDInception(Metric):
    """fid_inception: FID on the FID Inception-v3's pool3 features against the training split's statistics."""

    columns = ("fid_inception", "fid_inception_train_images", "fid_inception_weights")
    table = (Row("fid_inception", "FID (Inception)", "{:.3f}", compare_fmt="{:.2f}",
                 note="FID Inception-v3 {fid_inception_weights} against {fid_inception_train_images} training images; "
                      "papers: n=50,000"),)
    order = 110  # opt-in: after the metrics udm-eval scores by default

    def __init__(self, weights: str | None = None, train_images: int = 50_000, batch_size: int = 50):
        if int(train_images) < 2 or int(batch_size) < 1:
            raise UdmError(f"metric.fid_inception needs train_images >= 2 and batch_size >= 1, got {train_images} and {batch_size}")
        self.weights, self.train_images, self.batch_size = weights, int(train_images), int(batch_size)

    def why_not(self, model, context: Context) -> str | None:
        if model.modality != "image":
            return f"fid_inception applies to image checkpoints; this one holds {model.modality} data"
        if model.shape[0] not in (1, 3):
            return f"fid_inception reads grayscale or RGB images; these have {model.shape[0]} channels"
        if context.cfg.get("metrics") is None:
            return "fid_inception runs only when named (metrics=[fid_inception]): it is slow without a GPU"
        return None

    def check(self, model, context: Context) -> None:
        self.network(context)  # the weights, found and read before anything is sampled

    def network(self, context: Context) -> tuple[FIDInceptionV3, str]:
        """The network (on the CPU until compute moves it to the model's device) and its weights' id, loaded once
        per evaluation."""
        if "fid_inception" not in context.shared:
            path = find_weights(self.weights)
            context.shared["fid_inception"] = load_inception(path), weights_id(path)
        return context.shared["fid_inception"]

    def reference(self, model, context: Context, net: FIDInceptionV3, weights: str) -> dict[str, Tensor]:
        """The training images' statistics: cached, else computed and cached."""
        from udm.jobs.features import save_atomically

        path = statistics_path(model.recipe["data"], self.train_images, weights, context.cfg.get("cache_dir"))
        if path.is_file():
            return load_statistics(path)
        data = model.data("fit")
        train = getattr(data, "train", None)
        if not isinstance(train, Tensor) or len(train) < 2:
            raise UdmError(f"fid_inception's reference statistics need the training images as one tensor (data.train), at "
                           f"least 2 of them; {type(data).__name__} data has {'none' if train is None else len(train)}")
        print(f"udm-eval: Inception statistics of {min(self.train_images, len(train))} training images; cached at {path}")
        stats = reference_statistics(train[: self.train_images], net, self.batch_size, context.progress)
        save_atomically({"format": FORMAT, **stats, "data": dict(model.recipe["data"]), "weights": weights}, path)
        return stats

    @classmethod
    def compare_note(cls, results: list[dict]) -> str | None:
        """The weights and reference, once: FIDs compare only under one weights file and one reference."""
        seen = sorted({(r["fid_inception_weights"], r.get("fid_inception_train_images")) for r in results
                       if "fid_inception_weights" in r}, key=str)
        if not seen:
            return None
        note = "FID (Inception) is on the FID Inception-v3's pool3 features, " + "; ".join(
            f"weights `{weights}` against {fmt(count)} training images" for weights, count in seen) + "."
        if len(seen) > 1:
            note += " **These differ: FIDs compare only between rows of the same weights and reference.**"
        return note

    def compute(self, model, samples: Tensor, context: Context) -> dict:
        net, weights = self.network(context)
        net = net.to(context.device)
        stats = self.reference(model, context, net, weights)
        fid = frechet_inception_distance(stats, samples, net, self.batch_size, context.progress)
        return {"fid_inception": fid, "fid_inception_train_images": int(stats["real_features_num_samples"]),
                "fid_inception_weights": weights}
