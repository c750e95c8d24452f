"""The knobs of drawing x0_hat from a token process's logits, checked where they are set: temperature, top-k,
nucleus (top-p), the precision of the Gumbel noise, and semi-autoregressive blocks (udm.processes.discrete)."""

from __future__ import annotations

from torch import Tensor


def check_block_size(block_size: int | None, length: int) -> None:
    if block_size is not None and not (type(block_size) is int and 1 <= block_size <= length):
        raise ValueError(f"block_size must be a whole number of tokens in 1..{length} (or null: one block), got {block_size!r}")


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, sample_dtype: str) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (type(top_k) is not int or top_k < 1):
        raise ValueError(f"top_k must be a whole number of tokens >= 1 (or null: all), got {top_k!r}")
    if top_p is not None and not (type(top_p) in (int, float) and 0 < top_p <= 1):
        raise ValueError(f"top_p must lie in (0, 1] (or null: all), got {top_p!r}")
    if sample_dtype not in ("float32", "float64"):
        raise ValueError(f"sample_dtype must be float32 or float64, got {sample_dtype!r}")


def truncate(scaled: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """The logits with every token outside the top_k and outside the nucleus of mass top_p set to -inf (the most
    likely token always stays)."""
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, index = scaled.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the mass before this token already reaches p
        scaled = scaled.masked_fill(outside.scatter(-1, index, outside), float("-inf"))
    return scaled
