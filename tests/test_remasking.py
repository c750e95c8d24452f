"""Remasking (ReMDM) as the mixed step of the token processes, block (semi-autoregressive) order and the
confidence orders: an oracle still returns x0 exactly, eta = 0 is the improved sampler bit for bit, the number of
corrupted positions stays k(s), and remasked tokens are re-predicted."""

import math

import pytest
import torch

from udm.errors import UdmError
from udm.processes import TokenMask, TokenReplace, TokenUniform
from udm.processes import Gaussian
from udm.samplers import DDIM, Improved, ReMDM, Remasking, Sampler
from udm.samplers.steps import Mixed

L, V, SPECIAL, MASK = 12, 40, [0, 1], 2


def make(kind, **kwargs):
    if kind == "mask":
        return TokenMask(length=L, vocab_size=V, special_ids=SPECIAL, mask_id=MASK, **kwargs)
    edit = TokenUniform if kind == "uniform" else TokenReplace
    return edit(length=L, vocab_size=V, special_ids=[*SPECIAL, MASK], **kwargs)


def data(n=16, seed=0):
    return torch.randint(3, V, (n, L), generator=torch.Generator().manual_seed(seed))


def oracle(x0):
    return lambda x_t, t: torch.nn.functional.one_hot(x0, V).float() * 1e4


def noisy(seed=1):
    """A net with random logits: samples differ from run to run, so equality tests mean something."""
    def model(x_t, t):
        g = torch.Generator().manual_seed(seed + int(t[0]))
        return torch.randn(*x_t.shape, V, generator=g)
    return model


@pytest.mark.parametrize("kind", ["mask", "replace", "uniform"])
@pytest.mark.parametrize("schedule", ["rescale", "cap", "confidence"])
@pytest.mark.parametrize("steps,rate", [(None, "count"), (5, "count"), (None, "linear")])
def test_oracle_returns_x0_exactly_through_remasking(kind, schedule, steps, rate):
    p = make(kind, **({"schedule": "linear", "T": 30} if rate == "linear" else {}))
    x0 = data()
    g = torch.Generator().manual_seed(0)
    x_T = p.prior(x0, g) if kind == "mask" else p(x0, torch.full((len(x0),), p.T), p.sample_noise(x0, g))
    out = ReMDM(steps=steps, eta=0.5, schedule=schedule)(p, oracle(x0), x_T, generator=g)
    assert torch.equal(out, x0)


@pytest.mark.parametrize("kind", ["mask", "replace", "uniform"])
def test_eta_zero_is_the_improved_sampler_bit_for_bit(kind):
    p = make(kind, temperature=1.0)
    x_T = p.prior(data(8), torch.Generator().manual_seed(5))
    improved = Improved(steps=4)(p, noisy(), x_T, generator=torch.Generator().manual_seed(7))
    for sampler in (ReMDM(steps=4, eta=0.0), DDIM(steps=4, eta=0.0)):
        assert torch.equal(sampler(p, noisy(), x_T, generator=torch.Generator().manual_seed(7)), improved)
    remasked = ReMDM(steps=4, eta=0.5)(p, noisy(), x_T, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(remasked, improved)


def test_a_remasking_step_keeps_k_s_corrupted_positions_and_recorrupts_revealed_ones():
    """From x_t with k(t) masks, x_s holds exactly k(s) masks; with eta = 1 (sigma = sigma_max) some of them sit where
    x_t had a revealed token, and those re-revealed later are the net's new draw, not the old token."""
    p = make("mask")
    x0 = data(64)
    g = torch.Generator().manual_seed(0)
    t, s = torch.full((64,), 8), torch.full((64,), 6)
    x_t = p(x0, t, p.sample_noise(x0, g))
    x0_hat = p.x0_hat(oracle(x0)(x_t, t), x_t, t, g)
    rule = Mixed(eta=1.0).bind(p, [8, 6])
    x_s = rule(p, x_t, x0_hat, t, s, g)
    masked_s, masked_t = x_s == MASK, x_t == MASK
    assert torch.equal(masked_s.sum(-1), torch.full((64,), 6))
    again = masked_s & ~masked_t
    # sigma_max = k(s) / (L - k(t)) = 6 / 4 -> 1: every revealed token is remasked, capped at k(s) = 6 of them
    assert torch.equal(again.sum(-1), torch.full((64,), 4))
    assert torch.equal(torch.where(masked_s, x0, x_s), x0)


def oracle_step(p, n, t_int, s_int, data_seed, seed):
    """x_t of n random texts at t, the oracle's x0_hat there, the times t and s [n], and the generator."""
    x0 = data(n, seed=data_seed)
    g = torch.Generator().manual_seed(seed)
    t, s = torch.full((n,), t_int), torch.full((n,), s_int)
    x_t = p(x0, t, p.sample_noise(x0, g))
    return x_t, p.x0_hat(oracle(x0)(x_t, t), x_t, t, g), t, s, g


def test_remasking_count_follows_the_binomial_rate():
    """'rescale' at eta: r ~ Binomial(L - k(t), eta * min(1, k(s) / (L - k(t)))), capped at k(s)."""
    p = make("mask")
    x_t, x0_hat, t, s, g = oracle_step(p, 4000, 4, 3, data_seed=3, seed=1)
    again = p.remasked(x0_hat, x_t, t, s, 0.6, "rescale", None, g)
    def capped_mean(sigma, m=L - 4, cap=3):  # E[min(r, cap)], r ~ Binomial(m, sigma)
        return sum(min(r, cap) * math.comb(m, r) * sigma**r * (1 - sigma) ** (m - r) for r in range(m + 1))

    counts = again.sum(-1).double()
    assert abs(counts.mean().item() - capped_mean(0.6 * min(1.0, 3 / (L - 4)))) < 0.05
    assert counts.max() <= 3 and not (again & (x_t == MASK)).any()
    capped = p.remasked(x0_hat, x_t, t, s, 0.1, "cap", None, g).sum(-1).double()
    assert abs(capped.mean().item() - capped_mean(0.1)) < 0.05


def test_confidence_schedule_remasks_the_least_confident_tokens_more_often():
    p = make("mask")
    n = 20000
    x_t, x0_hat, t, s, g = oracle_step(p, n, 6, 5, data_seed=4, seed=2)
    weights = torch.zeros(n, L)
    weights[:, 0] = 2.0  # position 0 (when revealed) has weight e^2 against e^0 for the others
    again = p.remasked(x0_hat, x_t, t, s, 0.2, "rescale", weights, g)
    revealed = x_t != MASK
    rate = (again & revealed).sum(0).double() / revealed.sum(0).double()
    assert rate[0] > 2 * rate[1:].mean()


def test_blocks_restore_edits_left_to_right():
    """The edit model with block_size = 4 and an oracle: every position of block b is restored before any of block
    b + 1, and x0 comes back exactly."""
    p = make("replace", block_size=4)
    x0 = data(6)
    g = torch.Generator().manual_seed(0)
    x_T = p(x0, torch.full((6,), p.T), p.sample_noise(x0, g))
    restored_at = torch.full((6, L), -1)

    def watch(step):
        restored_at[(step.x_s == x0) & (step.x_t != x0)] = step.i

    assert torch.equal(Improved()(p, oracle(x0), x_T, generator=g, callback=watch), x0)
    per_block = restored_at.view(6, 3, 4)
    known = per_block >= 0
    last = torch.where(known, per_block, -10**6).amax(-1)
    first = torch.where(known, per_block, 10**6).amin(-1)
    assert (last[:, :-1] < first[:, 1:]).all()


def test_blocks_reveal_masks_left_to_right():
    p = make("mask", block_size=3)
    x_T = p.prior(data(5), torch.Generator().manual_seed(0))
    reveal = torch.full((5, L), -1)

    def watch(step):
        reveal[(step.x_t == MASK) & (step.x_s != MASK)] = step.i

    Improved(steps=6)(p, noisy(), x_T, generator=torch.Generator().manual_seed(1), callback=watch)
    # 2 tokens per step, blocks of 3: block b is done by step ceil(3 (b + 1) / 2) - 1 and starts after the last one
    per_block = reveal.view(5, 4, 3)
    assert (per_block.amax(-1)[:, :-1] <= per_block.amin(-1)[:, 1:]).all()
    assert (reveal >= 0).all()


@pytest.mark.parametrize("order", ["margin", "entropy"])
def test_confidence_orders_reveal_the_most_certain_positions_first(order):
    """One position's logits are peaked (margin near 1, entropy near 0): it is revealed on the first step."""
    p = make("mask", order=order)
    x_T = p.prior(data(3), None)

    def model(x_t, t):
        out = torch.zeros(*x_t.shape, V)
        out[:, 7, 11] = 20.0
        return out

    first = []
    Improved()(p, model, x_T, generator=torch.Generator().manual_seed(0),
               callback=lambda st: first.append(st.x_s) if st.i == 0 else None)
    assert torch.equal((first[0] != MASK).nonzero()[:, 1], torch.full((3,), 7))


def test_order_values_against_closed_forms():
    p = make("mask", order="margin")
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2] + [1e-30] * (V - 3)]]))
    tokens = torch.tensor([[1]])
    assert torch.allclose(p.priority(logits, tokens, None), torch.tensor([[0.2]]), atol=1e-6)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert torch.allclose(p.sampling(order="entropy").priority(logits, tokens, None), torch.tensor([[math.exp(-entropy)]]), atol=1e-5)
    assert torch.allclose(p.sampling(order="confidence").priority(logits, tokens, None), torch.tensor([[0.3]]), atol=1e-6)


def test_bad_remasking_knobs_are_refused():
    p = make("mask")
    x_T = p.prior(data(2), None)
    with pytest.raises(UdmError, match="schedule='sometimes': ReMDM's remasking schedules are rescale, cap, confidence"):
        ReMDM(eta=0.1, schedule="sometimes")
    with pytest.raises(UdmError, match="variance='sometimes' does not apply to TokenMask.*rescale"):
        Sampler(Mixed(eta=0.1, variance="sometimes"))(p, noisy(), x_T)
    with pytest.raises(UdmError, match="loop_steps=4 repeats a step that only remasking"):
        ReMDM(eta=0.0, loop_steps=4)
    with pytest.raises(UdmError, match="ReMDM \\(sampler=remdm\\) needs remasking.*which Gaussian"):
        ReMDM()(Gaussian(T=10), lambda x, t: x, torch.zeros(1, 2))
    with pytest.raises(UdmError, match="remasking \\(eta=0.2\\) needs"):
        Sampler(Remasking(0.2, "cap"))(Gaussian(T=10), lambda x, t: x, torch.zeros(1, 2))
    with pytest.raises(UdmError, match="eta must lie in"):
        ReMDM(eta=1.5)
    with pytest.raises(ValueError, match="block_size must be a whole number of tokens in 1..12"):
        p.sampling(block_size=13)


class TimeFree(torch.nn.Module):
    """A net that ignores t (as the [MASK]-count transformer does): logits from a fixed table per (position, token)."""

    uses_time = False

    def __init__(self):
        super().__init__()
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def forward(self, x_t, t):
        self.calls += 1
        return self.table[x_t] + self.table[x_t.roll(1, -1)]


def test_output_cache_reuses_unchanged_steps_and_changes_no_sample():
    """Remasking at a small rate over T = 48 > L steps: many steps neither reveal nor remask. With the cache they cost
    no net call, and the samples are bit for bit those of the uncached run."""
    from udm.samplers import OutputCache

    p = make("mask", schedule="linear", T=48)
    x_T = p.prior(data(1), None)
    net = TimeFree()
    plain = ReMDM(eta=0.02)(p, net, x_T, generator=torch.Generator().manual_seed(3))
    uncached_calls, net.calls = net.calls, 0
    cached = OutputCache(net, net)
    again = ReMDM(eta=0.02)(p, cached, x_T, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, again)
    assert uncached_calls == 48 and net.calls == cached.calls and cached.hits > 0 and cached.calls + cached.hits == 48


def test_output_cache_refuses_a_time_conditioned_net():
    net = TimeFree()
    net.uses_time = True
    with pytest.raises(UdmError, match="needs a net that ignores t"):
        from udm.samplers import OutputCache

        OutputCache(net, net)


def test_remdm_loop_revisits_the_nearly_finished_text_and_still_returns_x0():
    """loop_steps = 6 at loop_at = 0.25: the grid holds six extra steps at t_on = 3 of L = 12 (count schedule);
    remasking corrupts and reveals tokens there, and an oracle still ends at x0."""
    p = make("mask")
    x0 = data(8)
    sampler = ReMDM(eta=0.5, loop_steps=6, loop_at=0.25)
    ts = sampler.timesteps(p)
    assert ts == list(range(12, 3, -1)) + [3] * 7 + [2, 1]
    changed = []
    out = sampler(p, oracle(x0), p.prior(x0, None), generator=torch.Generator().manual_seed(0),
                  callback=lambda st: changed.append(bool((st.x_t != st.x_s).any())) if st.t == st.s else None)
    assert torch.equal(out, x0) and len(changed) == 6 and all(changed)
