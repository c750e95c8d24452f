"""Discrete token diffusion on fixed-length sequences (DESIGN.md section 2, "Discrete tokens").

The noise eps is an ordering of the l positions plus, for replacement, a replacement
token per position; F_t corrupts the first k(t) positions of the ordering:

    TokenReplace (the seed's edit model):  corrupted positions get a *different* token
    TokenMask    (absorbing):              corrupted positions become [MASK]

An ordering is stored as keys u in [0, 1] (the k(t) smallest keys are corrupted), a
replacement as an offset o in 1..n-1 within the n regular tokens. Both processes are
invertible: the corrupted positions of x_t are where it differs from x0_hat, so the
loop's inverse step keeps k(s) of them and restores the rest, which is the seed's
improved sampler (one token per step when s = t - 1, several when steps are skipped).
Which ones stay corrupted is the free part of eps_hat: random, or the least confident
first, carried by x0_hat as a `priority`.
"""

from __future__ import annotations

import copy
import dataclasses

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from udm.processes.base import ForwardProcess
from udm.processes.capabilities import Capabilities
from udm.processes.token_sampling import check_block_size, check_sampling, truncate

SCHEDULES = ("count", "linear", "cosine")
ORDERS = ("random", "confidence", "margin", "entropy")
REMASKING = ("rescale", "cap", "confidence")  # ReMDM's schedules of sigma_t (Wang et al. 2025, sec. 4.1)


class TokenNoise(NamedTuple):
    keys: Tensor  # [B, L] float: the k(t) smallest are corrupted by time t
    offsets: Tensor  # [B, L] long: replacement = regular[(index(x0) + offset) mod n]; 0 = unchanged


class TokenEstimate(NamedTuple):
    tokens: Tensor  # [B, L] long: x0_hat
    priority: Tensor  # [B, L] float in [0, 1]: corrupted positions with higher priority are restored first
    logits: Tensor | None = None  # [B, L, V]: the logits x0_hat was drawn from (special tokens at -inf)

    def confidence(self) -> Tensor:
        """[B, L]: q(x0_i = tokens_i | x_t), computed when asked (an exp over the vocabulary per position)."""
        if self.logits is None:
            raise ValueError("this token estimate carries no logits to read its confidence from")
        return token_probability(self.logits, self.tokens)


def token_probability(logits: Tensor, tokens: Tensor) -> Tensor:
    return (logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).exp()


def tokens_of(x: Tensor | TokenEstimate) -> Tensor:
    return x.tokens if isinstance(x, TokenEstimate) else x


class TokenProcess(ForwardProcess):
    """Shared machinery of the token processes; subclasses define `corrupt`, `prior` and `x0_hat`.

    length: the sequence length l. vocab_size / special_ids: the tokenizer's size and the
    ids never generated ([PAD], [UNK], [MASK], ...). schedule 'count' is time as a count of
    corrupted tokens (T = l, k(t) = t); 'linear' / 'cosine' are a rate over T steps
    (k(t) = round(l * gamma(t / T)), continuous-time masked diffusion on a grid).
    temperature scales the logits when x0_hat is drawn (0 = argmax); top_k / top_p keep only
    the k most likely tokens / the smallest set whose probability reaches p (nucleus sampling),
    after the temperature; sample_dtype='float64' draws the Gumbel noise and scales the logits in
    double precision (float32 Gumbel-max under-samples rare tokens, flow_matching issue 27).
    order picks which corrupted positions are restored first: at random, or the most certain first by the
    probability of the drawn token ('confidence'), the margin between the two most likely tokens ('margin')
    or the lowest entropy ('entropy'). block_size (semi-autoregressive generation, as LLaDA's blocks): the
    positions are restored block by block, left to right, each block seeing the finished ones (and the order
    within a block); null: the whole sequence is one block. For the edit and uniform processes blocks order the
    restoring only: the positions their x0_hat redraws span the sequence. loss_on: 'corrupted' or 'all' positions.

    The mixed step with eta > 0 remasks (ReMDM, Wang et al. 2025): `remasked` picks revealed positions to
    corrupt again, which the net re-predicts on a later step.
    """

    capabilities = Capabilities(invertible=True, real_valued=False, why_not_extrapolate="x0_hat is token ids",
                                remasking=True, variances=REMASKING)

    def __init__(
        self,
        length: int,
        vocab_size: int,
        special_ids: Sequence[int] = (),
        schedule: str = "count",
        T: int | None = None,
        temperature: float = 1.0,
        order: str = "random",
        loss_on: str = "corrupted",
        top_k: int | None = None,
        top_p: float | None = None,
        sample_dtype: str = "float32",
        block_size: int | None = None,
    ):
        super().__init__()
        check_sampling(temperature, top_k, top_p, sample_dtype)
        check_block_size(block_size, length)
        if length < 1:
            raise ValueError(f"sequence length must be positive, got {length}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown token schedule {schedule!r}; choose one of {list(SCHEDULES)}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; choose one of {list(ORDERS)}")
        if loss_on not in ("corrupted", "all"):
            raise ValueError(f"loss_on must be 'corrupted' or 'all', got {loss_on!r}")
        if schedule == "count":
            if T is not None and T != length:
                raise ValueError(f"schedule='count' has T = length = {length}; got T={T} (use schedule='linear' for another T)")
            T = length
        elif T is None or T < 1:
            raise ValueError(f"schedule={schedule!r} needs a positive number of steps T, got {T}")
        special = sorted({int(i) for i in special_ids})
        regular = torch.tensor([i for i in range(vocab_size) if i not in set(special)], dtype=torch.long)
        if len(regular) < 2:
            raise ValueError(f"a vocabulary of {vocab_size} with special ids {special} leaves fewer than 2 regular tokens")
        index = torch.zeros(vocab_size, dtype=torch.long)
        index[regular] = torch.arange(len(regular))
        self.length, self.vocab_size, self.special_ids = length, vocab_size, special
        self.schedule, self.T, self.temperature, self.order, self.loss_on = schedule, T, temperature, order, loss_on
        self.top_k, self.top_p, self.sample_dtype, self.block_size = top_k, top_p, sample_dtype, block_size
        special_mask = torch.zeros(vocab_size, dtype=torch.bool)
        special_mask[special] = True
        self.register_buffer("special_mask", special_mask, persistent=False)
        self.register_buffer("regular", regular, persistent=False)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("k", self.counts(), persistent=False)

    def counts(self) -> Tensor:
        """k(t) for t = 0..T: how many positions are corrupted at time t."""
        t = torch.arange(self.T + 1, dtype=torch.float64)
        if self.schedule == "count":
            return t.long()
        gamma = t / self.T if self.schedule == "linear" else 1 - torch.cos(math.pi / 2 * t / self.T)
        return torch.round(self.length * gamma).long()

    def t_for_count(self, m: int) -> int:
        """The time at which exactly m positions are corrupted (to start infilling m blanks)."""
        hits = (self.k == m).nonzero()
        if len(hits) == 0:
            raise ValueError(f"no step of this {self.schedule} schedule corrupts exactly {m} of {self.length} positions")
        return int(hits[0])

    # --- F_t and its inverse ---------------------------------------------------------------

    def corrupted(self, t: Tensor, keys: Tensor) -> Tensor:
        """[B, L] bool: the k(t) positions with the smallest keys."""
        rank = keys.argsort(dim=-1, stable=True).argsort(-1)
        return rank < self.k[t].unsqueeze(-1)

    def corrupt(self, x0: Tensor, offsets: Tensor) -> Tensor:
        """The corrupted token at every position (used where the ordering says so)."""
        raise NotImplementedError

    def forward(self, x0: Tensor | TokenEstimate, t: Tensor, eps: TokenNoise) -> Tensor:
        x0 = tokens_of(x0)
        self.check_tokens(x0)
        return torch.where(self.corrupted(t, eps.keys), self.corrupt(x0, eps.offsets), x0)

    def inverse(self, x0: Tensor | TokenEstimate, x_t: Tensor, t: Tensor) -> TokenNoise:
        """eps_hat: the positions where x_t differs from x0_hat come first, lowest priority first."""
        tokens = tokens_of(x0)
        priority = x0.priority if isinstance(x0, TokenEstimate) else torch.zeros(x_t.shape, device=x_t.device)
        differ = x_t != tokens
        keys = torch.where(differ, 0.5 * priority.clamp(0, 1), torch.ones_like(priority))
        offsets = torch.where(differ, (self.index[x_t] - self.index[tokens]) % len(self.regular), torch.zeros_like(x_t))
        return TokenNoise(keys, offsets)

    def sample_noise(self, x0: Tensor | TokenEstimate, generator: torch.Generator | None = None) -> TokenNoise:
        shape, device = tokens_of(x0).shape, tokens_of(x0).device
        keys = torch.rand(shape, device=device, generator=generator)
        offsets = torch.randint(1, len(self.regular), shape, device=device, generator=generator)
        return TokenNoise(keys, offsets)

    def check_tokens(self, x: Tensor) -> None:
        if x.dtype != torch.long or x.shape[-1] != self.length:
            raise ValueError(f"{type(self).__name__} expects token ids [B, {self.length}] (long), got {x.dtype} {list(x.shape)}")

    # --- the predictor -----------------------------------------------------------------------

    def logits(self, out: Tensor) -> Tensor:
        """The net's logits with the special tokens ruled out, in float32."""
        if out.shape[-1] != self.vocab_size:
            raise ValueError(f"the net gives {out.shape[-1]} logits per position; the tokenizer has {self.vocab_size} tokens")
        return out.float().masked_fill(self.special_mask, float("-inf"))

    def sampling(self, temperature: float | None = None, order: str | None = None, top_k: int | None = None,
                 top_p: float | None = None, sample_dtype: str | None = None, block_size: int | None = None) -> TokenProcess:
        """A copy of the process that draws x0_hat with these settings (None: keep the process's own)."""
        other = copy.copy(self)
        for key, value in (("temperature", temperature), ("order", order), ("top_k", top_k), ("top_p", top_p),
                           ("sample_dtype", sample_dtype), ("block_size", block_size)):
            if value is not None:
                setattr(other, key, value)
        if other.order not in ORDERS:
            raise ValueError(f"unknown order {other.order!r}; choose one of {list(ORDERS)}")
        check_sampling(other.temperature, other.top_k, other.top_p, other.sample_dtype)
        check_block_size(other.block_size, other.length)
        return other

    def draw(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """A token per position from softmax(logits / temperature) (Gumbel-max), restricted to the top_k / top_p
        tokens where asked; argmax at temperature 0."""
        if self.temperature == 0:
            return logits.argmax(-1)
        double = self.sample_dtype == "float64"
        scaled = truncate((logits.double() if double else logits) / self.temperature, self.top_k, self.top_p)
        u = torch.rand(scaled.shape, device=logits.device, generator=generator, **({"dtype": torch.float64} if double else {}))
        u = u.clamp_(1e-300 if double else 1e-20, 1.0)
        return (scaled - torch.log(-torch.log(u))).argmax(-1)

    def estimate(self, logits: Tensor, tokens: Tensor, generator: torch.Generator | None) -> TokenEstimate:
        """x0_hat = tokens with its restoring priority and the logits it was drawn from."""
        return TokenEstimate(tokens, self.in_blocks(self.priority(logits, tokens, generator)), logits)

    def priority(self, logits: Tensor, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        """[B, L] in [0, 1], higher is restored first: uniform noise (order='random'), the drawn token's
        probability, the margin p_(1) - p_(2) of the two most likely tokens, or exp(-entropy)."""
        if self.order == "confidence":
            return token_probability(logits, tokens)
        if self.order == "margin":
            top = logits.softmax(-1).topk(2, dim=-1).values
            return top[..., 0] - top[..., 1]
        if self.order == "entropy":
            p = logits.softmax(-1)
            return torch.exp((p * logits.log_softmax(-1)).nan_to_num().sum(-1))  # exp(-H) in (0, 1]
        return torch.rand(tokens.shape, device=tokens.device, generator=generator)

    def in_blocks(self, priority: Tensor) -> Tensor:
        """The priority with whole blocks ranked left to right: (blocks - 1 - b + p / 2) / blocks for block b, so
        that every position of block b outranks every one of block b + 1 (p / 2 < 1 keeps them apart)."""
        if self.block_size is None:
            return priority
        blocks = math.ceil(self.length / self.block_size)
        b = torch.arange(self.length, device=priority.device) // self.block_size
        return (blocks - 1 - b + 0.5 * priority.clamp(0, 1)) / blocks

    def most_doubted(self, logits: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        """[B, L] bool: the k(t) positions whose seen token the model doubts most, 1 - q(x0_i = x_t,i | x_t) (ties
        broken at random): where the edit and uniform processes' x0_hat redraws."""
        doubt = 1 - logits.softmax(-1).gather(-1, x_t.unsqueeze(-1)).squeeze(-1)
        doubt = doubt + 1e-6 * torch.rand(doubt.shape, device=doubt.device, generator=generator)  # random ties
        rank = (-doubt).argsort(dim=-1, stable=True).argsort(-1)
        return rank < self.k[t].unsqueeze(-1)

    def remasked(self, x0_hat: TokenEstimate, x_t: Tensor, t: Tensor, s: Tensor, eta: float, schedule: str,
                 weight_logits: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """[B, L] bool: the revealed positions (where x_t agrees with x0_hat) corrupted again on the step t -> s.

        With alpha_t = 1 - k(t)/L the share of revealed positions, ReMDM's largest remasking rate keeping the
        marginals is sigma_max = min(1, (1 - alpha_s) / alpha_t) = min(1, k(s) / (L - k(t))); 'rescale' takes
        sigma = eta sigma_max, 'cap' sigma = min(eta, sigma_max). The count r ~ Binomial(L - k(t), sigma) (each
        revealed token independently, as in ReMDM) is capped at k(s), so x_s still holds k(s) corrupted
        positions: r remasked ones and the k(s) - r least certain of x_t's. Which r: uniformly at random, or
        with weight_logits (ReMDM-conf: -confidence at reveal) by Gumbel top-r. At s = 0, k(s) = 0 and nothing is remasked.
        """
        revealed = x_t == x0_hat.tokens
        n_revealed = revealed.sum(-1)
        k_s = self.k[s]
        sigma_max = (k_s / n_revealed.clamp(min=1)).clamp(max=1.0)
        sigma = torch.minimum(sigma_max, torch.full_like(sigma_max, eta)) if schedule == "cap" else eta * sigma_max
        r = torch.binomial(n_revealed.double(), sigma.double(), generator=generator).long().clamp(max=k_s)
        score = -torch.log(-torch.log(torch.rand(x_t.shape, device=x_t.device, generator=generator).clamp_(1e-20, 1.0)))
        if weight_logits is not None:
            score = score + weight_logits
        score = score.masked_fill(~revealed, float("-inf"))
        rank = (-score).argsort(dim=-1, stable=True).argsort(-1)
        return revealed & (rank < r.unsqueeze(-1))

    def guide(self, out_c: Tensor, out_u: Tensor, w: float, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None):
        """Guidance on log-probabilities, log p_w = log p_u + w (log p_c - log p_u), then x0_hat drawn from p_w
        (softmax renormalises; the special tokens stay ruled out)."""
        log_c, log_u = out_c.float().log_softmax(-1), out_u.float().log_softmax(-1)
        return self.x0_hat(torch.lerp(log_u, log_c, w), x_t, t, generator)

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, eps: TokenNoise) -> Tensor:
        """Cross-entropy of q(x0 | x_t), summed over the scored positions and divided by their number.

        With loss_on='corrupted' and the count schedule this is an unbiased estimate of the
        per-token negative ELBO of the absorbing process (E_k [1/k sum over masked CE]).
        """
        ce = F.cross_entropy(out.float().transpose(1, -1), x0, reduction="none")  # [B, L]
        scored = (x_t != x0) if self.loss_on == "corrupted" else torch.ones_like(ce, dtype=torch.bool)
        per_sequence = (ce * scored).sum(-1) / scored.sum(-1).clamp(min=1)
        return per_sequence.mean()

    def describe(self) -> str:
        return (f"{type(self).__name__}(length={self.length}, vocab={self.vocab_size}, schedule={self.schedule}, "
                f"T={self.T}, order={self.order})")


class TokenMask(TokenProcess):
    """Absorbing diffusion: corrupted positions become [MASK]; x_T is all [MASK].

    x0_hat keeps every visible token and draws the masked ones from q(x0 | x_t); the
    inverse step then reveals k(t) - k(s) masked positions (Gibbs-like with an MLM when
    one per step), chosen at random or by the model's confidence in its draw.
    """

    def __init__(self, mask_id: int, special_ids: Sequence[int] = (), **kwargs):
        super().__init__(special_ids=[*special_ids, mask_id], **kwargs)
        self.mask_id = int(mask_id)

    def corrupt(self, x0: Tensor, offsets: Tensor) -> Tensor:
        return torch.full_like(x0, self.mask_id)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.full(x0.shape, self.mask_id, dtype=torch.long, device=x0.device)

    capabilities = dataclasses.replace(TokenProcess.capabilities, likelihood="token nelbo")

    def steps_without_change(self, ts: list[int]) -> list[bool]:
        """A step between times with equal counts k(t) = k(s) reveals no position: x_s = x_t, no network needed."""
        k = self.k.tolist()  # once per sampling run, on the host
        return [k[t] == k[s] for t, s in zip(ts, ts[1:] + [0])]

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> TokenEstimate:
        logits = self.logits(out)
        drawn = self.draw(logits, generator)
        masked = x_t == self.mask_id
        tokens = torch.where(masked, drawn, x_t)
        return self.estimate(logits, tokens, generator)


class TokenReplace(TokenProcess):
    """The seed's edit model: corrupted positions hold a token different from the original.

    x_T is uniform over the regular tokens. x0_hat picks the k(t) positions the model
    finds least likely to be original (1 - q(x0_i = x_t,i | x_t)) and draws a different
    token there; the inverse step restores k(t) - k(s) of them. The model must also learn
    which tokens are intact, so the loss covers all positions by default.
    """

    def __init__(self, loss_on: str = "all", **kwargs):
        super().__init__(loss_on=loss_on, **kwargs)

    def corrupt(self, x0: Tensor, offsets: Tensor) -> Tensor:
        n = len(self.regular)
        replaced = self.regular[(self.index[x0] + offsets) % n]
        return torch.where(offsets == 0, x0, replaced)

    def prior(self, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        idx = torch.randint(0, len(self.regular), x0.shape, device=x0.device, generator=generator)
        return self.regular[idx]

    def x0_hat(self, out: Tensor, x_t: Tensor, t: Tensor, generator: torch.Generator | None = None) -> TokenEstimate:
        logits = self.logits(out)
        chosen = self.most_doubted(logits, x_t, t, generator)
        elsewhere = logits.scatter(-1, x_t.unsqueeze(-1), float("-inf"))  # never the token seen
        tokens = torch.where(chosen, self.draw(elsewhere, generator), x_t)
        return self.estimate(torch.where(chosen.unsqueeze(-1), elsewhere, logits), tokens, generator)
