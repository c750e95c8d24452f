"""Uniform-state token diffusion: the corrupted fraction and x_T against their closed forms, an oracle through the
improved sampler, and training."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from udm.processes import TokenUniform
from udm.samplers import DDIM, Improved, Inverse, Naive

L, V, SPECIAL = 12, 10, [0, 1, 2]
N = V - len(SPECIAL)  # regular tokens


def make(**kwargs):
    return TokenUniform(length=L, vocab_size=V, special_ids=SPECIAL, **kwargs)


def data(n=16, seed=0):
    return torch.randint(3, V, (n, L), generator=torch.Generator().manual_seed(seed))


def oracle(x0):
    return lambda x_t, t: F.one_hot(x0, V).float() * 1e4


def uniform_counts(tokens):
    """Counts of each regular token, and a chi-square test that they are uniform (p-value)."""
    counts = torch.bincount(tokens.flatten(), minlength=V)
    assert counts[SPECIAL].sum() == 0  # special tokens never appear
    return stats.chisquare(counts[3:].numpy()).pvalue


@pytest.mark.parametrize("schedule,T", [("count", None), ("cosine", 40)])
def test_a_position_differs_with_probability_k_over_l_times_n_minus_1_over_n(schedule, T):
    p = make(schedule=schedule, T=T)
    x0 = data(20000)
    g = torch.Generator().manual_seed(1)
    for t_int in (p.t_for_count(1), p.T // 3, p.T):
        t = torch.full((len(x0),), t_int)
        eps = p.sample_noise(x0, g)
        x_t = p(x0, t, eps)
        corrupted = p.corrupted(t, eps.keys)
        differ = x_t != x0
        assert (corrupted.sum(-1) == p.k[t]).all() and not (differ & ~corrupted).any()
        expected = p.k[t_int].item() / L * (N - 1) / N
        sd = math.sqrt(expected * (1 - expected) / differ.numel())
        assert abs(differ.float().mean().item() - expected) < 4 * sd + 1e-12
        # a corrupted position holds a uniformly random regular token, its original included
        assert uniform_counts(((p.index[x_t] - p.index[x0]) % N + 3)[corrupted]) > 1e-3
        assert torch.equal(p(x0, t, p.inverse(x0, x_t, t)), x_t)


def test_x_T_and_the_prior_are_uniform_over_the_regular_tokens():
    p = make()
    x0 = torch.full((5000, L), 4)  # one token everywhere: x_T must not remember it
    g = torch.Generator().manual_seed(2)
    x_T = p(x0, torch.full((len(x0),), p.T), p.sample_noise(x0, g))
    assert uniform_counts(x_T) > 1e-3 and uniform_counts(p.prior(x0, g)) > 1e-3
    assert (x_T == 4).float().mean().item() == pytest.approx(1 / N, abs=4 * math.sqrt(1 / N / x_T.numel()))


@pytest.mark.parametrize("steps", [None, 6, 4, 1])  # 1, 2, 3 and 12 tokens per step
@pytest.mark.parametrize("order", ["random", "confidence"])
def test_oracle_recovers_x0_exactly_with_the_improved_sampler(steps, order):
    p = make(order=order)
    x0 = data()
    g = torch.Generator().manual_seed(0)
    x_T = p(x0, torch.full((len(x0),), p.T), p.sample_noise(x0, g))
    assert torch.equal(Improved(steps=steps)(p, oracle(x0), x_T, generator=g), x0)
    assert torch.equal(Improved(steps=steps)(p, oracle(x0), p.prior(x0, g), generator=g), x0)  # from the data-free prior


def test_oracle_recovers_x0_under_a_rate_schedule_and_with_the_baseline_step():
    p = make(schedule="cosine", T=200)
    x0 = data()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(DDIM(steps=20)(p, oracle(x0), p.prior(x0, g), generator=g), x0)
    assert torch.equal(Naive(steps=None)(make(), oracle(x0), make().prior(x0, g), generator=g), x0)


def test_x0_hat_redraws_the_k_t_most_doubted_positions_and_may_keep_the_seen_token():
    p = make()
    x_t = data(1)
    t = torch.tensor([2])
    logits = F.one_hot(x_t, V).float() * 10
    logits[0, [3, 7]] = F.one_hot(x_t[0, [3, 7]], V).float() * 2  # doubted, yet the seen token is still the likeliest
    p.temperature = 0
    assert torch.equal(p.x0_hat(logits, x_t, t).tokens, x_t)  # the edit model would have to change both
    logits[0, 7, 5 if x_t[0, 7] != 5 else 6] = 3.0
    est = p.x0_hat(logits, x_t, t)
    assert (est.tokens != x_t).nonzero()[:, 1].tolist() == [7]
    s = torch.tensor([1])  # the inverse step keeps k(s) = 1 of the d = 1 differing positions: no change yet
    assert torch.equal(Inverse()(p, x_t, est, t, s), x_t)
    assert torch.equal(Inverse()(p, x_t, est, t, torch.tensor([0])), est.tokens)


def test_the_loss_is_cross_entropy_over_all_positions():
    p = make()
    x0 = data(2)
    eps = p.sample_noise(x0, torch.Generator().manual_seed(0))
    t = torch.tensor([3, 12])
    out = torch.randn(2, L, V)
    expected = F.cross_entropy(out.transpose(1, 2), x0)
    torch.testing.assert_close(p.loss(out, x0, p(x0, t, eps), t, eps), expected)


def test_training_decreases_the_loss_on_a_tiny_text():
    from udm.nets.transformer import Transformer

    torch.manual_seed(0)
    p = make()
    lines = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 9, 8, 7, 6, 5]])
    x0 = lines.repeat(8, 1)
    net = Transformer(vocab_size=V, length=L, hidden=32, layers=1, heads=2, dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = p.training_loss(net, x0, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 0.7 * math.log(N) and last < 0.5 * first, (first, last)
