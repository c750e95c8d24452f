"""Token sampling knobs of the token processes: top-k, nucleus (top-p) and float64 Gumbel-max, against hand-made
distributions; the default draw is unchanged bit for bit."""

import pytest
import torch

from udm.processes import TokenMask
from udm.processes.discrete import truncate

PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05])


def process(**knobs):
    return TokenMask(length=1, vocab_size=6, special_ids=[4, 5], mask_id=5, **knobs)


def frequencies(p, n=20000, seed=0):
    logits = PROBS.log().repeat(n, 1)
    logits = torch.cat([logits, torch.full((n, 2), float("-inf"))], -1)  # the two special tokens
    drawn = p.draw(logits, torch.Generator().manual_seed(seed))
    return torch.bincount(drawn, minlength=6).double() / n


@pytest.mark.parametrize("knobs,allowed", [({"top_k": 1}, [0]), ({"top_k": 2}, [0, 1]), ({"top_p": 0.5}, [0]),
                                           ({"top_p": 0.7}, [0, 1]), ({"top_p": 0.85}, [0, 1, 2]), ({"top_p": 1.0}, [0, 1, 2, 3])])
def test_truncation_draws_from_the_renormalised_kept_tokens(knobs, allowed):
    freq = frequencies(process(**knobs))
    want = torch.zeros(6, dtype=torch.float64)
    want[allowed] = PROBS[allowed].double() / PROBS[allowed].sum()
    assert torch.equal(freq > 0, want > 0)
    assert torch.allclose(freq, want, atol=0.015)


def test_temperature_applies_before_the_nucleus():
    hot = truncate((PROBS.log() / 100.0)[None], None, 0.5)  # nearly uniform after T = 100: the nucleus holds 2 tokens
    assert torch.isfinite(hot).sum() == 2


def test_float64_gumbel_matches_the_distribution_and_the_default_draw_is_unchanged():
    assert torch.allclose(frequencies(process(sample_dtype="float64")), torch.cat([PROBS, torch.zeros(2)]).double(), atol=0.015)
    logits = torch.randn(7, 3, 6)
    default = process(temperature=0.8).draw(logits, torch.Generator().manual_seed(3))
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(3)).clamp_(1e-20, 1.0)
    assert torch.equal(default, (logits / 0.8 - torch.log(-torch.log(u))).argmax(-1))  # as before these knobs


def test_sampling_returns_a_checked_copy():
    p = process()
    hot = p.sampling(temperature=0.5, top_k=3, sample_dtype="float64")
    assert (hot.temperature, hot.top_k, hot.sample_dtype) == (0.5, 3, "float64") and (p.temperature, p.top_k) == (1.0, None)
    for bad, message in [({"top_k": 0}, "top_k must be a whole number"), ({"top_p": 1.5}, "top_p must lie in"),
                         ({"sample_dtype": "half"}, "sample_dtype must be"), ({"temperature": -1}, "temperature must be")]:
        with pytest.raises(ValueError, match=message):
            p.sampling(**bad)
