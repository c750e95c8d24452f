"""Small CIFAR-10 python batches folders in the exact format of cifar-10-python.tar.gz, for tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root: Path, per_batch: int = 16, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """root/cifar-10-batches-py with five data batches and a test batch of `per_batch` images each: Python 2 style
    pickles (bytes keys, protocol 2), b"data" uint8 [N, 3072] in red/green/blue planes, b"labels" a list of ints.
    Returns (folder, pixels [6 * per_batch, 3, 32, 32] in file order, labels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = rng.integers(0, 256, size=(6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=6 * per_batch)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        rows = slice(k * per_batch, (k + 1) * per_batch)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[rows]],
                 b"data": pixels[rows].reshape(per_batch, 3072), b"filenames": [b"x.png"] * per_batch}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, pixels, labels
