"""A small GPT-2 from scratch: udm's fluency judge of generated text (udm.jobs.judge trains it on the data).

No pretrained language model can be fetched here, so generative perplexity is measured under a causal LM
trained on the data's own training split, as FID is measured on a classifier trained on the images. It reads
the data's token ids directly (the tokenizer of the checkpoint it judges) and needs no tokenizer of its own.

The start symbol (BOS) is the id `vocab_size`: one past the data's vocabulary, so no text holds it and no
existing token ([PAD], [MASK]) changes meaning. Every text is read as BOS, x_1, ..., x_{L-1}, so that all L
tokens of x are predicted, the first one from BOS alone; BOS itself is never a target, and its logit is left
out of the distribution over tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udm.errors import UdmError


class CausalLM(nn.Module):
    """x [B, L'] token ids (L' <= length) -> logits [B, L', vocab_size] of p(x_i | BOS, x_<i); `nll(x)` -> [B, L'].

    A transformers GPT2LMHeadModel built from a GPT2Config (weights random, nothing downloaded) with
    vocab_size + 1 embeddings (the last one BOS) and `length` positions.
    """

    def __init__(self, vocab_size: int, length: int, n_layer: int = 4, n_embd: int = 192, n_head: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel  # here: transformers takes seconds to import

        if vocab_size < 1 or length < 1:
            raise UdmError(f"the judge needs a vocabulary and a text length of at least 1, got {vocab_size} and {length}")
        if n_embd % n_head:
            raise UdmError(f"judge.net.n_embd={n_embd} must be a multiple of judge.net.n_head={n_head}")
        self.vocab_size, self.length, self.bos = vocab_size, length, vocab_size
        config = GPT2Config(vocab_size=vocab_size + 1, n_positions=length, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                            bos_token_id=self.bos, eos_token_id=self.bos)
        self.gpt2 = GPT2LMHeadModel(config)

    def check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.dtype != torch.long:
            raise UdmError(f"the judge reads token ids [N, L] (torch.long), got {x.dtype} {list(x.shape)}")
        if x.shape[1] > self.length:
            raise UdmError(f"the judge reads texts of at most {self.length} tokens, got {x.shape[1]}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise UdmError(f"token ids must lie in 0..{self.vocab_size - 1} (the judge's vocabulary), got "
                           f"{int(x.min())}..{int(x.max())}; was the judge trained on this tokenizer?")

    def forward(self, x: Tensor) -> Tensor:
        self.check(x)
        inputs = torch.cat([torch.full_like(x[:, :1], self.bos), x[:, :-1]], dim=1)
        return self.gpt2(input_ids=inputs).logits[..., : self.vocab_size]

    def nll(self, x: Tensor) -> Tensor:
        """-log p(x_i | BOS, x_<i) in nats, per token [B, L']."""
        return F.cross_entropy(self(x).transpose(1, 2).float(), x, reduction="none")
