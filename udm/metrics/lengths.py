"""How long generated texts are, against held-out texts (variable-length text, data.lengths=variable).

With p(l) and q(l) the fractions of generated and held-out texts of l tokens (before the end token, padding
not counted: udm.data.lengths.text_lengths), l = 0..L:

    mean_length           sum_l l p(l)
    held_out_mean_length  sum_l l q(l)
    length_tv             TV(p, q) = 1/2 sum_l |p(l) - q(l)|, in [0, 1] (0: the same histogram)
    length_tv_train       TV(p', q) for p' the lengths of as many training texts as samples (a fixed seeded
                          draw): what a model whose lengths follow the training texts exactly scores at this n,
                          since a histogram of n texts is noisy and TV(p, q) > 0 even then
"""

from __future__ import annotations

import torch
from torch import Tensor

from udm.data.lengths import text_lengths


def length_histogram(lengths: Tensor, L: int) -> Tensor:
    """[L + 1] float64: the fraction of texts of each length 0..L."""
    return torch.bincount(lengths, minlength=L + 1).double() / max(1, len(lengths))


def total_variation(p: Tensor, q: Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def length_measures(samples: Tensor, held_out: Tensor, train: Tensor, end: int, pad: int) -> dict[str, float]:
    """The length measures above of token rows [N, L] (samples, held-out and training rows alike)."""
    L = samples.shape[-1]
    n, q = text_lengths(samples, end, pad), text_lengths(held_out, end, pad)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: len(samples)]
    reference = length_histogram(text_lengths(train[pick], end, pad), L)
    return {
        "mean_length": float(n.double().mean()),
        "held_out_mean_length": float(q.double().mean()),
        "length_tv": total_variation(length_histogram(n, L), length_histogram(q, L)),
        "length_tv_train": total_variation(reference, length_histogram(q, L)),
    }
