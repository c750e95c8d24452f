"""Two-dimensional toy data for score-based sampling: points in [-1, 1]^2 drawn once from a seed.

kind='mixture': 8 Gaussians on a circle (radius 0.7, std `noise`); kind='moons': scikit-learn's
two moons, scaled into the square. `save_samples` draws the samples over a histogram of
the data, so where a sampler puts its mass can be seen at a glance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from udm.data.memory import InMemoryData
from udm.errors import UdmError


def mixture_points(n: int, noise: float, generator: torch.Generator) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = 2 * math.pi * k / 8
    centres = 0.7 * torch.stack([angle.cos(), angle.sin()], 1)
    return centres + noise * torch.randn(n, 2, generator=generator)


def moons_points(n: int, noise: float, seed: int) -> Tensor:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    x = (x - x.mean(0)) / np.abs(x - x.mean(0)).max() * 0.9
    return torch.as_tensor(x, dtype=torch.float32)


class Toy2D(InMemoryData):
    name = "toy2d"
    modality = "points"
    derived = {"dim": 2}

    def __init__(self, kind: str = "mixture", n: int = 20000, noise: float = 0.05, batch_size: int = 256,
                 test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if kind not in ("mixture", "moons"):
            raise UdmError(f"unknown toy data kind {kind!r}; choose 'mixture' or 'moons'")
        if n < 2:
            raise UdmError(f"data.n must be at least 2 points, got {n}")
        self.kind, self.n, self.noise, self.seed = kind, n, noise, seed
        self.batch_size, self.test_fraction, self.num_workers = batch_size, test_fraction, num_workers
        self.train: Tensor | None = None
        self.test: Tensor | None = None

    @property
    def shape(self) -> tuple[int]:
        return (2,)

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        g = torch.Generator().manual_seed(self.seed)
        points = mixture_points(self.n, self.noise, g) if self.kind == "mixture" else moons_points(self.n, self.noise, self.seed)
        n_test = max(1, round(self.n * self.test_fraction))
        self.test, self.train = points[:n_test].contiguous(), points[n_test:].contiguous()

    def recipe(self) -> dict:
        return {}

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        """A scatter of the samples (dots) over the data's histogram (grey), as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.setup()
        path = Path(path).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.hist2d(self.train[:, 0].numpy(), self.train[:, 1].numpy(), bins=80, range=[[-1.2, 1.2]] * 2, cmap="Greys")
        pts = samples.detach().float().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:red", alpha=0.6)
        ax.set_xlim(-1.2, 1.2), ax.set_ylim(-1.2, 1.2), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{len(pts)} samples over the {self.kind} data", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
