"""CIFAR-10 from its python batches folder, as the authors distribute it (cifar-10-python.tar.gz, unpacked).

    udm-train data=cifar10 data.path=~/data/cifar-10-batches-py

The folder holds data_batch_1 .. data_batch_5 (the 50,000 training images), test_batch (the 10,000 held-out
ones) and batches.meta (the class names). Each batch is a pickled dict whose b"data" is a uint8 array
[10000, 3072] (the red, green and blue 32 x 32 planes of one image per row) and whose b"labels" are 0..9. The
pickles are read by an unpickler that admits only what those dicts are made of (numpy arrays and dtypes), so a
foreign pickle cannot run code. The official split is kept: training on the five data batches, the held-out
side (validation loss, references, FID's held-out draw) the test batch.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from udm.data.images import ImageData, to_unit_range
from udm.errors import UdmError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SIDE = 32
ADMITTED = {  # (module, name) a CIFAR batch's pickle may reference: a numpy array's reconstruction
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how a Python 3 pickle at protocol 2 writes bytes (a re-saved batch); harmless
}


class BatchUnpickler(pickle.Unpickler):
    """pickle.Unpickler that refuses every global but numpy's array reconstruction."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ADMITTED:
            raise pickle.UnpicklingError(f"a CIFAR-10 batch holds no {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One batch file's dict, keys decoded to str (the files are Python 2 pickles with bytes keys)."""
    if not path.is_file():
        raise UdmError(f"data.path={str(path.parent)!r} has no {path.name}: CIFAR-10's python batches folder holds "
                       f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} and batches.meta (cifar-10-python.tar.gz, unpacked)")
    try:
        batch = BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise UdmError(f"{path} is not a CIFAR-10 python batch ({e})") from None
    if not isinstance(batch, dict):
        raise UdmError(f"{path} is not a CIFAR-10 python batch (it holds a {type(batch).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def batch_images(batch: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [N, 3, 32, 32], labels int64 [N]) of one batch dict, checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        shape = getattr(data, "shape", None)
        raise UdmError(f"{path}: 'data' must be uint8 pixels [N, 3072] (three 32x32 planes per row), got "
                       f"{type(data).__name__} {list(shape) if shape is not None else ''}".rstrip())
    if labels is None or len(labels) != len(data):
        raise UdmError(f"{path}: 'labels' must give one class per image ({len(data)}), got "
                       f"{'none' if labels is None else len(labels)}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise UdmError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, SIDE, SIDE), labels


class CIFAR10(ImageData):
    """CIFAR-10's 60,000 32x32 colour images (50,000 train, 10,000 test) and their 10 classes, from `path`."""

    name = "cifar10"

    def __init__(self, path: str, image_size: int = 32, channels: int = 3, **kwargs):
        if channels != 3:
            raise UdmError(f"CIFAR-10 images are RGB: data.channels must be 3, got {channels}")
        given = sorted({"test_fraction", "split_seed"} & set(kwargs))
        if given:
            raise UdmError(f"data=cifar10 keeps CIFAR-10's own split (the test batch held out), so {', '.join(given)} "
                           f"does not apply")
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        self.path = Path(path).expanduser()
        self._labels: Tensor | None = None

    def read(self) -> tuple[Tensor, Tensor]:
        """(images [N, 3, 32, 32] in [-1, 1], labels [N]): the five training batches, then the test batch."""
        if not self.path.is_dir():
            raise UdmError(f"data.path={str(self.path)!r} is not a folder; data=cifar10 reads CIFAR-10's python batches "
                           f"folder (cifar-10-batches-py, unpacked from cifar-10-python.tar.gz)")
        parts = [batch_images(read_batch(self.path / name), self.path / name) for name in (*TRAIN_BATCHES, TEST_BATCH)]
        self.n_train = sum(len(labels) for _, labels in parts[:-1])  # CIFAR-10's split: the test batch is held out
        meta = self.path / "batches.meta"
        if meta.is_file():
            names = read_batch(meta).get("label_names")
            if names is not None:
                self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        pixels = np.concatenate([p for p, _ in parts])
        self._labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        return to_unit_range(pixels, 255.0), self._labels

    def load(self) -> Tensor:
        return self.read()[0]

    def load_labels(self) -> Tensor:
        return self._labels if self._labels is not None else self.read()[1]
