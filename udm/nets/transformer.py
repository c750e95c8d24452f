"""A transformers BERT encoder as the x0-predictor of token processes, built from config, no download.

BertForMaskedLM from a BertConfig, trained from scratch: token ids [B, L] in, logits
[B, L, V] out. With time_conditioning, a sinusoidal embedding of t (through a small
MLP, zero-initialised so it starts as a plain MLM) is added to every token embedding,
which the edit process needs to know how many tokens are corrupted; absorbing masks
show their own count and can do without.
"""

from __future__ import annotations

from torch import Tensor, nn

from udm.nets.unet import timestep_embedding


class Transformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        length: int,
        hidden: int = 256,
        layers: int = 4,
        heads: int = 4,
        intermediate: int | None = None,
        dropout: float = 0.1,
        time_conditioning: bool = True,
    ):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM

        if hidden % heads:
            raise ValueError(f"net.hidden={hidden} must be a multiple of net.heads={heads}")
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate or 4 * hidden,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=length,
            type_vocab_size=1,
            pad_token_id=0,
        )
        config._attn_implementation = "sdpa"
        self.length, self.hidden = length, hidden
        self.bert = BertForMaskedLM(config)
        self.time = None
        if time_conditioning:
            self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            nn.init.zeros_(self.time[-1].weight), nn.init.zeros_(self.time[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        if x_t.shape[-1] > self.length:
            raise ValueError(f"the net was built for sequences of {self.length} tokens, got {x_t.shape[-1]}")
        embeds = self.bert.get_input_embeddings()(x_t)
        if self.time is not None:
            embeds = embeds + self.time(timestep_embedding(t, self.hidden))[:, None]
        return self.bert(inputs_embeds=embeds).logits
