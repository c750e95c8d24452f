"""Uniform-state token diffusion: the corrupted fraction and x_T against their closed forms, an oracle through the
improved sampler, and the continuous-time negative ELBO against quadrature and a brute-force discrete-time bound."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

from udm.errors import UdmError
from udm.metrics.likelihood import token_nelbo
from udm.metrics.nelbo import BOUNDS, TokenNELBO
from udm.metrics.uniform_likelihood import nelbo_integrand, net_time, uniform_nelbo
from udm.processes import TokenMask, TokenReplace, TokenUniform
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


def test_x0_hat_redraws_the_k_t_most_doubted_positions_from_what_the_others_say():
    """At t = 2 (alpha = 5/6, n = 7) a doubted position keeps its seen token only if its logit leads the others' by
    more than log((n alpha + 1 - alpha) / (1 - alpha)) = log 36: the seen token's own evidence does not count."""
    p = make(temperature=0)
    x_t = data(1)
    t = torch.tensor([2])
    logits = F.one_hot(x_t, V).float() * 12
    logits[0, 3] = F.one_hot(x_t[0, 3], V).float() * (math.log(36) + 0.5)  # doubted, and the context still agrees
    logits[0, 7] = F.one_hot(x_t[0, 7], V).float() * (math.log(36) - 0.5)  # doubted, and the context disagrees
    logits[0, 7, 5 if x_t[0, 7] != 5 else 6] = 0.1
    est = p.x0_hat(logits, x_t, t)
    assert (est.tokens != x_t).nonzero()[:, 1].tolist() == [7] and est.tokens[0, 7] == (5 if x_t[0, 7] != 5 else 6)
    s = torch.tensor([1])  # the inverse step keeps k(s) = 1 of the d = 1 differing positions: no change yet
    assert torch.equal(Inverse()(p, x_t, est, t, s), x_t)
    assert torch.equal(Inverse()(p, x_t, est, t, torch.tensor([0])), est.tokens)
    shift = p.context_logits(logits, x_t, torch.tensor([[5 / 6]])) - logits  # only the seen token's logit moves
    assert torch.allclose(shift.gather(-1, x_t.unsqueeze(-1)), torch.tensor(-math.log(36)))
    assert shift.abs().sum() == pytest.approx(L * math.log(36), rel=1e-6)


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


# --- the bound ----------------------------------------------------------------------------------------------


def expected_integrand(alpha, x_theta_of, n, x=0):
    """E_{z ~ q_alpha(. | x)} of the integrand for one position, the model a table x_theta_of(alpha) [z, n]."""
    q = alpha * F.one_hot(torch.tensor(x), n).double() + (1 - alpha) / n
    values = nelbo_integrand(torch.tensor(alpha, dtype=torch.float64), x_theta_of(alpha), torch.full((n,), x), torch.arange(n))
    return float((q * values).sum())


def continuous_bound(x_theta_of, n, x=0, points=None):
    """int_0^1 E_z[integrand] dalpha by adaptive quadrature (the log singularity at alpha = 1 is integrable)."""
    value, _ = integrate.quad(lambda a: expected_integrand(a, x_theta_of, n, x), 0, 1, limit=200, epsabs=1e-12,
                              epsrel=1e-12, points=points)
    return value


def duo_model(x_theta_of, n):
    """p(z_s | z_t) = q(z_s | z_t, x = x_theta), x_theta put into q(z_s | x) as a probability vector: [z_s, z_t]."""

    def model(step, q_s, q_t, a_t):
        joint = step * (x_theta_of(a_t) @ q_s).T  # q(z_t | z_s) sum_x x_theta(x | z_t) q(z_s | x)
        return joint / joint.sum(0, keepdim=True)

    return model


def mixture_model(x_hat_of, n):
    """p(z_s | z_t) = sum_x q(z_s | z_t, x) x_hat(x | z_t): [z_s, z_t]."""

    def model(step, q_s, q_t, a_t):
        return step * ((x_hat_of(a_t) / q_t.T) @ q_s).T  # q(z_s | z_t, x) = q(z_t | z_s) q(z_s | x) / q(z_t | x)

    return model


def discrete_bound(model, n, T, x=0):
    """The discrete-time negative ELBO of the per-position uniform chain on alpha_j = 1 - j / T, by brute force:
    sum_j E_{z_j ~ q(. | x)} KL(q(z_{j-1} | z_j, x) || p(z_{j-1} | z_j)); no prior term (alpha_T = 0: both uniform)
    and no decoder term (alpha_0 = 1: z_0 = x)."""
    eye, total = torch.eye(n, dtype=torch.float64), 0.0
    for j in range(1, T + 1):
        a_t, a_s = 1 - j / T, 1 - (j - 1) / T
        step = eye * (a_t / a_s) + (1 - a_t / a_s) / n  # q(z_t | z_s) [z_s, z_t]
        q_s, q_t = a_s * eye + (1 - a_s) / n, a_t * eye + (1 - a_t) / n  # q(z | x) [x, z]
        posterior = step * q_s[x][:, None] / q_t[x][None, :]  # q(z_s | z_t, x) [z_s, z_t]
        p = model(step, q_s, q_t, a_t)
        kl = torch.where(posterior > 0, posterior * (posterior / p).log(), 0.0).sum(0)
        total += float((q_t[x] * kl).sum())
    return total


def table(n, seed=0):
    """x_theta(alpha) [z, n]: a fixed smooth table, different for every seen token z."""
    g = torch.Generator().manual_seed(seed)
    A, C = torch.randn(n, n, generator=g, dtype=torch.float64), torch.randn(n, n, generator=g, dtype=torch.float64)
    return lambda alpha: (A + alpha * C).softmax(-1)


def posterior_table(n, seed=0):
    """x_hat(alpha) [z, n]: the Bayes posterior p(x | z) ~ pi_0(x | z) q_alpha(z | x) of a fixed smooth prior table,
    which is what a net trained by cross-entropy estimates."""
    prior = table(n, seed)

    def x_hat(alpha):
        likelihood = alpha * torch.eye(n, dtype=torch.float64) + (1 - alpha) / n  # q(z | x) [x, z], symmetric
        joint = prior(alpha) * likelihood
        return joint / joint.sum(-1, keepdim=True)

    return prior, x_hat


@pytest.mark.parametrize("x", [0, 1, 2])
def test_the_continuous_bound_is_the_limit_of_the_discrete_time_bound(x):
    """duo's model q(z_s | z_t, x_theta) with x_theta in the formula; the mixture sum_x q(z_s | z_t, x) x_hat(x) of a
    posterior x_hat with its context posterior in the formula."""
    x_theta_of = table(3)
    exact = continuous_bound(x_theta_of, 3, x)
    d500, d1000 = (discrete_bound(duo_model(x_theta_of, 3), 3, T, x) for T in (500, 1000))
    assert abs(d1000 - exact) < 1e-3
    assert abs(2 * d1000 - d500 - exact) < 1e-5  # the gap is O(1 / T): Richardson's extrapolation removes it
    prior, x_hat_of = posterior_table(3, seed=1)
    three = TokenUniform(length=1, vocab_size=3)  # no special tokens: the vocabulary is the 3 regular tokens
    context = lambda alpha: three.context_logits(x_hat_of(alpha).log(), torch.arange(3), alpha).softmax(-1)
    torch.testing.assert_close(context(0.3), prior(0.3), rtol=0, atol=1e-12)  # Bayes' rule undone
    exact = continuous_bound(context, 3, x)
    d500, d1000 = (discrete_bound(mixture_model(x_hat_of, 3), 3, T, x) for T in (500, 1000))
    assert abs(d1000 - exact) < 1e-3 and abs(2 * d1000 - d500 - exact) < 1e-5


@pytest.mark.parametrize("n", [3, 50, 4000])
def test_the_bound_of_the_uniform_model_is_log_n_and_of_the_oracle_zero(n):
    """The uniform model's reverse chain is the stationary forward chain, so its bound is exactly -log p(x) = log n."""
    x_theta = torch.full((2, n), 1 / n, dtype=torch.float64)
    x, z = torch.tensor([0, 0]), torch.tensor([0, 1])  # by symmetry one z != x stands for all n - 1

    def expected(alpha):
        weights = torch.tensor([alpha + (1 - alpha) / n, (n - 1) * (1 - alpha) / n], dtype=torch.float64)
        return float((weights * nelbo_integrand(torch.tensor(alpha, dtype=torch.float64), x_theta, x, z)).sum())

    bound, _ = integrate.quad(expected, 0, 1, limit=200, epsabs=1e-12, epsrel=1e-12)
    assert bound == pytest.approx(math.log(n), abs=1e-6)
    alpha = torch.tensor([0.999, 0.5, 1e-3], dtype=torch.float64)[:, None]
    z = torch.tensor([[0, 1, n - 1]] * 3)
    x = torch.zeros(3, 3, dtype=torch.long)
    assert (nelbo_integrand(alpha, F.one_hot(x, n).double(), x, z) == 0).all()
    assert (nelbo_integrand(alpha, torch.rand(3, 3, n, dtype=torch.float64).softmax(-1), x, z) > 0).all()


def test_the_estimate_is_zero_for_the_oracle_and_unbiased_for_a_context_free_model():
    p = make()
    x0 = data(8)
    assert uniform_nelbo(p, oracle(x0), x0, torch.Generator().manual_seed(0)).abs().max() < 1e-9
    # L = 2, T = 2: each position's net output is a table of logits of its own z_t and of t, asked at t = 1
    # (alpha_net = 1/2) for tau < 3/4 and at t = 2 (alpha_net = 0) above; the estimate's mean is the quadrature
    two = TokenUniform(length=2, vocab_size=V, special_ids=SPECIAL)
    logits = torch.randn(2, V, V, generator=torch.Generator().manual_seed(3)) * 2

    def x_theta_of(alpha):
        t = 1 if 1 - alpha < 0.75 else 2
        context = two.context_logits(two.logits(logits[t - 1, two.regular]).double(), two.regular, 1 - t / 2)
        return context.softmax(-1)[:, two.regular]

    x0 = torch.full((40000, 2), 5)
    estimate = uniform_nelbo(two, lambda z_t, t: logits[t[:, None] - 1, z_t], x0, torch.Generator().manual_seed(0), draws=2)
    exact = continuous_bound(x_theta_of, N, x=int(two.index[5]), points=[0.25])
    assert estimate.mean().item() == pytest.approx(exact, abs=4 * estimate.std().item() / len(x0) ** 0.5)


def test_the_net_is_asked_at_the_trained_time_of_the_nearest_count():
    p = make(schedule="linear", T=48)  # k(t) = round(t / 4) (half to even): about four times per count
    tau = torch.tensor([0.0, 0.06, 0.5, 1.0], dtype=torch.float64)  # L tau = 0, 0.72, 6, 12
    t = net_time(p, tau)
    assert t.tolist() == [3, 3, 22, 46]  # the first of equal counts; never a time with no corrupted position
    assert p.k[t].tolist() == [1, 1, 6, 12] and p.k[2] == 0


def test_each_token_process_gets_the_bound_it_declares():
    mask = TokenMask(length=L, vocab_size=V, special_ids=SPECIAL[:2], mask_id=2)
    replace = TokenReplace(length=L, vocab_size=V, special_ids=SPECIAL)
    assert BOUNDS[make().capabilities.likelihood] is uniform_nelbo and BOUNDS[mask.capabilities.likelihood] is token_nelbo
    metric = TokenNELBO(samples=4)
    assert metric.why_not(SimpleNamespace(process=make()), None) is None
    assert "TokenReplace(" in metric.why_not(SimpleNamespace(process=replace), None)
    x0 = data(2)
    with pytest.raises(UdmError, match="uniform-state token processes .*TokenMask"):
        uniform_nelbo(mask, oracle(x0), x0)
    with pytest.raises(UdmError, match=r"\[MASK\] \(absorbing\) processes only"):
        token_nelbo(make(), oracle(x0), x0)
    x0[0, 0] = 0
    with pytest.raises(UdmError, match="special tokens"):
        uniform_nelbo(make(), oracle(x0), x0)
