"""Token processes: F_t corrupts exactly k(t) positions, the inverse finds them, and an oracle
predictor recovers x0 exactly through the one sampling loop at any tokens-per-step."""

import pytest
import torch

from udm.errors import UdmError
from udm.processes import TokenEstimate, TokenMask, TokenReplace
from udm.samplers import DDIM, DDPM, DPMSolver, Improved, Inverse, Naive

L, V, SPECIAL, MASK = 12, 40, [0, 1], 2


def make(kind, **kwargs):
    if kind == "mask":
        return TokenMask(length=L, vocab_size=V, special_ids=SPECIAL, mask_id=MASK, **kwargs)
    return TokenReplace(length=L, vocab_size=V, special_ids=[*SPECIAL, MASK], **kwargs)


def data(n=16, seed=0):
    return torch.randint(3, V, (n, L), generator=torch.Generator().manual_seed(seed))


def start(p, x0, g):
    """x_T = F_T(x0, eps): for replace every token differs from x0 (the data-free prior is
    uniform, which may hit x0 by chance; the oracle's exactness is about the process)."""
    return p(x0, torch.full((len(x0),), p.T), p.sample_noise(x0, g))


def oracle(x0):
    """A perfect x0-predictor: logits that put all mass on the true tokens."""

    def model(x_t, t):
        return torch.nn.functional.one_hot(x0, V).float() * 1e4

    return model


@pytest.mark.parametrize("kind", ["mask", "replace"])
@pytest.mark.parametrize("schedule,T", [("count", None), ("linear", 100), ("cosine", 50)])
def test_forward_corrupts_exactly_k_positions_and_the_inverse_finds_them(kind, schedule, T):
    p = make(kind, schedule=schedule, T=T)
    x0 = data()
    g = torch.Generator().manual_seed(1)
    for t_int in [0, 1, p.T // 3, p.T]:
        t = torch.full((len(x0),), t_int)
        eps = p.sample_noise(x0, g)
        x_t = p(x0, t, eps)
        changed = x_t != x0
        assert (changed.sum(-1) == p.k[t]).all()  # never keeps the original at a corrupted position
        if kind == "mask":
            assert (x_t[changed] == MASK).all()
        else:
            assert not torch.isin(x_t, torch.tensor([*SPECIAL, MASK])).any()
        eps_hat = p.inverse(x0, x_t, t)
        assert torch.equal(p(x0, t, eps_hat), x_t)
        assert torch.equal(p.corrupted(t, eps_hat.keys), changed)
    assert p.k[0] == 0 and p.k[p.T] == L


@pytest.mark.parametrize("kind", ["mask", "replace"])
@pytest.mark.parametrize("steps", [None, 6, 4, 1])  # 1, 2, 3 and 12 tokens per step
@pytest.mark.parametrize("order", ["random", "confidence"])
def test_oracle_recovers_x0_exactly_with_the_improved_sampler(kind, steps, order):
    p = make(kind, order=order)
    x0 = data()
    g = torch.Generator().manual_seed(0)
    x_T = start(p, x0, g)
    out = Improved(steps=steps)(p, oracle(x0), x_T, generator=g)
    assert torch.equal(out, x0)


@pytest.mark.parametrize("kind", ["mask", "replace"])
def test_oracle_recovers_x0_under_a_rate_schedule(kind):
    p = make(kind, schedule="cosine", T=200)
    x0 = data()
    g = torch.Generator().manual_seed(0)
    out = DDIM(steps=20)(p, oracle(x0), start(p, x0, g), generator=g)  # eta = 0: the inverse step
    assert torch.equal(out, x0)


@pytest.mark.parametrize("kind", ["mask", "replace"])
def test_one_step_restores_exactly_k_t_minus_k_s_positions(kind):
    p = make(kind)
    x0 = data()
    g = torch.Generator().manual_seed(3)
    t, s = torch.full((len(x0),), 9), torch.full((len(x0),), 6)
    x_t = p(x0, t, p.sample_noise(x0, g))
    est = p.x0_hat(oracle(x0)(x_t, t), x_t, t, g)
    x_s = Inverse()(p, x_t, est, t, s)
    assert ((x_s != x0).sum(-1) == 6).all()
    assert ((x_s != x_t).sum(-1) == 3).all()  # only corrupted positions moved, each to x0
    moved = x_s != x_t
    assert torch.equal(x_s[moved], x0[moved])


def test_confidence_order_reveals_the_most_confident_positions_first():
    p = make("mask", order="confidence")
    x_t = torch.full((1, L), MASK)
    t, s = torch.tensor([L]), torch.tensor([L - 2])
    logits = torch.zeros(1, L, V)
    logits[0, torch.arange(L), 5] = torch.linspace(0, 11, L)  # the last positions are the surest
    p.temperature = 0
    est = p.x0_hat(logits, x_t, t)
    x_s = Inverse()(p, x_t, est, t, s)
    assert (x_s[0, -2:] == 5).all() and (x_s[0, :-2] == MASK).all()


def test_edit_predictor_changes_only_the_positions_it_doubts_most():
    p = make("replace")
    x_t = data(1)
    t = torch.tensor([2])
    logits = torch.nn.functional.one_hot(x_t, V).float() * 10
    logits[0, [3, 7]] = 0.0  # the model doubts positions 3 and 7 only
    est = p.x0_hat(logits, x_t, t, torch.Generator().manual_seed(0))
    changed = (est.tokens != x_t).nonzero()[:, 1].tolist()
    assert changed == [3, 7]
    assert isinstance(est, TokenEstimate)


@pytest.mark.parametrize("kind", ["mask", "replace"])
def test_baseline_recorrupts_fresh_positions(kind):
    """The seed's baseline: x_s = F_s(x0_hat, fresh eps) still ends at x0 with an oracle."""
    p = make(kind)
    x0 = data()
    g = torch.Generator().manual_seed(0)
    out = Naive(steps=None)(p, oracle(x0), start(p, x0, g), generator=g)
    assert torch.equal(out, x0)


def test_loss_is_cross_entropy_over_corrupted_positions():
    p = make("mask")
    x0 = data(2)
    t = torch.tensor([3, 12])
    eps = p.sample_noise(x0, torch.Generator().manual_seed(0))
    x_t = p(x0, t, eps)
    out = torch.randn(2, L, V)
    ce = torch.nn.functional.cross_entropy(out.transpose(1, 2), x0, reduction="none")
    masked = x_t == MASK
    expected = torch.stack([ce[i][masked[i]].mean() for i in range(2)]).mean()
    torch.testing.assert_close(p.loss(out, x0, x_t, t, eps), expected)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(schedule="count", T=7), "T = length"),
        (dict(schedule="linear"), "needs a positive number of steps"),
        (dict(schedule="zigzag"), "unknown token schedule"),
        (dict(order="backwards"), "unknown order"),
        (dict(temperature=-1), "temperature"),
    ],
)
def test_bad_process_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make("mask", **kwargs)


def test_wrong_logit_width_is_named():
    p = make("mask")
    with pytest.raises(ValueError, match="tokenizer has 40 tokens"):
        p.x0_hat(torch.zeros(1, L, V + 1), torch.full((1, L), MASK), torch.tensor([L]))


def test_priors():
    g = torch.Generator().manual_seed(0)
    ref = data(64)
    assert (make("mask").prior(ref, g) == MASK).all()
    x_T = make("replace").prior(ref, g)
    assert x_T.min() >= 3 and x_T.max() < V and len(x_T.unique()) > V // 2  # uniform over regular tokens


def test_mask_steps_that_reveal_nothing_skip_the_network():
    """With T = 40 > L = 8 under the linear schedule most steps keep k(t) = k(s): only the others call the net."""
    from udm.processes import TokenMask

    process = TokenMask(mask_id=9, length=8, vocab_size=10, schedule="linear", T=40)
    x0 = torch.randint(0, 9, (3, 8))
    calls = []

    def oracle(x_t, t):
        calls.append(int(t[0]))
        return torch.nn.functional.one_hot(x0, 10).float() * 50

    out = DDIM(steps=None)(process, oracle, process.prior(x0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x0)
    k = process.k.tolist()
    assert calls == [t for t in range(40, 0, -1) if k[t] != k[t - 1]] and len(calls) == 8


@pytest.mark.parametrize("kind", ["mask", "replace"])
def test_token_processes_refuse_gaussian_variances_and_extrapolation(kind):
    """Tokens remask rather than add Gaussian noise (DDPM's variances are refused by name) and have no real-valued
    x0_hat (DPM-Solver)."""
    p = make(kind)
    x0 = data(2)
    x_T = start(p, x0, torch.Generator().manual_seed(0))
    name = type(p).__name__
    with pytest.raises(UdmError, match=f"variance='beta' does not apply to {name}.*rescale"):
        DDPM(variance="beta")(p, oracle(x0), x_T)
    with pytest.raises(UdmError, match=f"DPM-Solver.*needs real-valued data, which {name}"):
        DPMSolver(steps=4)(p, oracle(x0), x_T)
