"""The FID feature extractor: a classifier trained on a data module's training split, cached per data config.

`udm-features data=mnist` trains it (or reports the cached one); `udm-eval` loads it, and
trains it on the fly when it is missing (for text data, `udm-features data=poems` trains the
fluency judge instead: udm.jobs.judge). The file lives at

    <cache_dir>/<data name>-<hash of the data config>.pt
    cache_dir default: $XDG_CACHE_HOME/udm/features, else ~/.cache/udm/features

and holds only tensors and plain values (net kwargs, weights, held-out accuracy, the
training settings), so it loads with torch.load(weights_only=True). The hash leaves out
batch_size and num_workers, which do not change the images. FIDs are comparable only
under the same extractor: `retrain=true` replaces it, and udm-eval records its id.

Training is a plain torch loop with a rich progress bar rather than a Lightning Trainer:
a classifier on a few thousand in-memory images needs no checkpoints, loggers, resume or
DDP, and the loop stays a dozen lines that run in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from udm.jobs.epochs import fit_epochs
from udm.jobs.outputs import check_output_folder
from udm.checkpoint import load_cached
from udm.errors import UdmError
from udm.models import pick_device
from udm.nets.classifier import Classifier

FORMAT = "udm-fid-extractor/1"
NOT_THE_IMAGES = ("batch_size", "num_workers", "condition", "flip")  # data settings that leave the images and the split unchanged


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "udm" / "features"


def cache_path(data_cfg: dict[str, Any], cache_dir: str | Path | None = None, ignore: tuple[str, ...] = NOT_THE_IMAGES) -> Path:
    """Where the extractor for this data config lives: <cache_dir>/<name>-<hash>.pt, the hash over the data
    settings but `ignore` (udm.jobs.judge keys its judges the same way, ignoring other settings)."""
    key = {k: v for k, v in data_cfg.items() if k not in ignore}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    name = str(data_cfg.get("_target_", "data")).rsplit(".", 1)[-1].lower()
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / f"{name}-{digest}.pt"


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate every image by its own random (dy, dx) in [-max_shift, max_shift], filling with background (-1)."""
    if max_shift < 1:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator, device=generator.device).to(x.device)
    rows, cols = dy + torch.arange(h, device=x.device), dx + torch.arange(w, device=x.device)  # [B, H], [B, W]
    crops = padded[torch.arange(b, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return crops.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(net: Classifier, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    net.eval()
    device = next(net.parameters()).device
    right = sum(int((net(x.to(device)).argmax(1).cpu() == y).sum()) for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return right / len(labels)


def fit(net: Classifier, images: Tensor, labels: Tensor, epochs: int, batch_size: int, lr: float, weight_decay: float,
        shift_fraction: float, seed: int, progress: bool = True) -> None:
    """Cross-entropy with AdamW under a one-cycle learning rate, random translations as augmentation."""
    device = next(net.parameters()).device
    images, labels = images.to(device), labels.to(device)
    generator = torch.Generator().manual_seed(seed)
    max_shift = round(shift_fraction * images.shape[-1])

    def batch_loss(idx: Tensor) -> Tensor:
        return F.cross_entropy(net(random_shift(images[idx], max_shift, generator)), labels[idx])

    fit_epochs(net, len(images), batch_loss, epochs, batch_size, lr, weight_decay, generator, "the FID feature extractor",
               lambda loss: f"loss {loss.item():.3f}", progress=progress)


def train_extractor(data_cfg: dict[str, Any], extractor: DictConfig, device: torch.device, progress: bool = True) -> dict[str, Any]:
    """Train the classifier on the data's training split; returns the payload that is cached (weights on CPU)."""
    data = instantiate(data_cfg)
    data.setup("fit")
    if not hasattr(data, "labels"):
        raise UdmError(f"{type(data).__name__} data holds no labelled images; the FID feature extractor needs "
                       f"labelled images (data=mnist or data=digits)")
    train_labels, test_labels = data.labels()
    net_cfg = {**OmegaConf.to_container(extractor.net, resolve=True),
               "in_channels": int(data.shape[0]), "num_classes": int(max(train_labels.max(), test_labels.max())) + 1}
    start = time.perf_counter()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # the seed below leaves no trace
        torch.manual_seed(extractor.seed)
        net = instantiate(net_cfg).to(device)
        fit(net, data.train, train_labels, extractor.epochs, extractor.batch_size, extractor.lr, extractor.weight_decay,
            extractor.shift_fraction, extractor.seed, progress)
    seconds = time.perf_counter() - start
    settings = {k: v for k, v in OmegaConf.to_container(extractor, resolve=True).items() if k != "net"}
    return {
        "format": FORMAT,
        "net": net_cfg,
        "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
        "test_accuracy": accuracy(net, data.test, test_labels),
        "train_accuracy": accuracy(net, data.train, train_labels),
        "train_seconds": seconds,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "data": dict(data_cfg),
        "settings": settings,
    }


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file first, so that a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_extractor(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """The cached classifier (eval mode) and its record (accuracy, settings, data), read with weights_only=True."""
    path = Path(path)
    payload = load_cached(path, FORMAT, "the FID feature extractor", "a udm FID feature extractor",
                          "delete it or run udm-features with retrain=true")
    net = instantiate(payload["net"])
    net.load_state_dict(payload["state_dict"])
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    info["path"] = str(path)
    info["id"] = f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"  # changes when retrained
    return net.eval(), info


def ensure_extractor(data_cfg: dict[str, Any], extractor: DictConfig, cache_dir: str | None, device: torch.device,
                     retrain: bool = False, progress: bool = True, who: str = "udm-features") -> tuple[Classifier, dict[str, Any]]:
    """The cached extractor for this data config, trained (with a message) when missing or when retrain is set."""
    path = cache_path(data_cfg, cache_dir)
    if retrain or not path.is_file():
        print(f"{who}: training the FID feature extractor on {data_cfg.get('_target_')} "
              f"({extractor.epochs} epochs); it is cached at {path}")
        save_atomically(train_extractor(data_cfg, extractor, device, progress), path)
    return load_extractor(path)


def features(cfg: DictConfig) -> dict[str, Any]:
    """udm-features: train (or find) the extractor for cfg.data and print its held-out accuracy; for text data,
    the fluency judge instead (udm.jobs.judge)."""
    if getattr(get_class(cfg.data._target_), "modality", None) == "text":
        from udm.jobs.judge import fluency_judge

        return fluency_judge(cfg)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    check_output_folder(cfg.cache_dir or default_cache_dir(), key="cache_dir")
    net, info = ensure_extractor(data_cfg, cfg.extractor, cfg.cache_dir, pick_device(cfg.device), cfg.retrain, cfg.progress)
    trained = f"trained in {info['train_seconds']:.1f}s on {info['n_train']} images"
    print(f"udm-features: held-out accuracy {info['test_accuracy']:.2%} on {info['n_test']} images "
          f"({trained}, {info['net']['num_features']} features)")
    print(f"udm-features: extractor at {info['path']}")
    return info
