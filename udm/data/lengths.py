"""Variable-length text as rows of one length L (data.lengths=variable): a text's ids, the end token, then padding.

    row(ids) = ids + [end] + [pad] * (L - len(ids) - 1)    for len(ids) < L
             = ids[:L]                                     otherwise (no room for the end: the row's end is the text's)

The token process generates the end token and the padding like any other token (they are not among its
special ids), so the lengths of the texts it writes follow the data's. Reading a row back stops at its first
end token and skips padding (`text_lengths` here, udm.data.tokenizers.content for the text).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Rows(NamedTuple):
    ids: Tensor  # [N, L] long
    cut: int  # texts longer than L tokens, cut to their first L
    longest: int  # tokens of the longest text before cutting


def pad_rows(texts: list[list[int]], length: int, end: int, pad: int) -> Rows:
    """Every text's ids as a row of `length`: the ids, the end token and padding; a longer text is cut to `length`."""
    rows = [ids[:length] if len(ids) >= length else ids + [end] + [pad] * (length - len(ids) - 1) for ids in texts]
    return Rows(torch.tensor(rows, dtype=torch.long).view(len(rows), length), sum(len(ids) > length for ids in texts),
                max(map(len, texts), default=0))


def text_lengths(rows: Tensor, end: int, pad: int) -> Tensor:
    """[N] long: the tokens of each row [N, L] before its first end token, padding not counted (L without an end)."""
    before_end = (rows == end).long().cumsum(-1) == 0
    return (before_end & (rows != pad)).sum(-1)
