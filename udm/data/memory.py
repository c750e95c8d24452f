"""What every udm data module shares: the whole split held in memory as one tensor per side."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler


class Rows(Dataset):
    """The rows of one tensor (images, token sequences, points) as a dataset; with `conds`, (row, its condition)."""

    def __init__(self, rows: Tensor, conds: Tensor | None = None):
        if conds is not None and len(conds) != len(rows):
            raise ValueError(f"{len(conds)} conditions for {len(rows)} rows")
        self.rows, self.conds = rows, conds

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i] if self.conds is None else (self.rows[i], self.conds[i])


class InMemoryData(L.LightningDataModule):
    """A data module whose setup() fills `train` and `test` tensors; batching is the same for all."""

    modality: str  # what a row is: "image", "text" or "points" (written into every checkpoint's recipe)
    train: Tensor | None = None
    test: Tensor | None = None
    train_cond: Tensor | None = None  # one condition per row where the data module yields (x0, cond); else None
    test_cond: Tensor | None = None
    batch_size: int = 64
    num_workers: int = 0

    def loader(self, rows: Tensor, shuffle: bool, conds: Tensor | None = None) -> DataLoader:
        dataset = Rows(rows, conds)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            # the permutation's seed is one draw per epoch from the global RNG (seed_everything fixes it), while
            # the workers' base seed comes from a private generator: the global stream is then the same with or
            # without (persistent) workers and whether or not a validation ran, and a resumed run replays it
            sampler=RandomSampler(dataset) if shuffle else None,
            generator=torch.Generator(),
            drop_last=shuffle and len(rows) >= self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: the copy to the GPU overlaps the step
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train, shuffle=True, conds=self.train_cond)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.test, shuffle=False, conds=self.test_cond)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test, shuffle=False, conds=self.test_cond)
