"""A transformers BERT encoder as the x0-predictor of token processes, built from config, no download.

BertForMaskedLM from a BertConfig, trained from scratch: token ids [B, L] in, logits
[B, L, V] out. With time_conditioning, a sinusoidal embedding of t (through a small
MLP, zero-initialised so it starts as a plain MLM) is added to every token embedding,
which the edit process needs to know how many tokens are corrupted; absorbing masks
show their own count and can do without.

With `input_dim` the net works on vectors instead of ids (the encoding model's Gaussian
diffusion of token embeddings): x_t [B, L, input_dim] is projected into the encoder
(BertModel, no MLM head) and its last hidden states back to [B, L, input_dim].
"""

from __future__ import annotations

from torch import Tensor, nn

from udm.nets.unet import timestep_embedding
from udm.nets.conditioning import refuse_condition


class Transformer(nn.Module):
    def __init__(
        self,
        vocab_size: int | None,
        length: int,
        hidden: int = 256,
        layers: int = 4,
        heads: int = 4,
        intermediate: int | None = None,
        dropout: float = 0.1,
        time_conditioning: bool = True,
        input_dim: int | None = None,
    ):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM, BertModel

        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give net.vocab_size (token ids in, logits out) or net.input_dim (vectors in and out), not both")

        if hidden % heads:
            raise ValueError(f"net.hidden={hidden} must be a multiple of net.heads={heads}")
        config = BertConfig(
            vocab_size=vocab_size or 1,
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
        self.input_dim = input_dim
        if input_dim is None:
            self.bert = BertForMaskedLM(config)
        else:
            self.bert = BertModel(config, add_pooling_layer=False)
            self.bert.set_input_embeddings(nn.Linear(input_dim, hidden))
            self.output = nn.Linear(hidden, input_dim)
        self.time = None
        if time_conditioning:
            self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            nn.init.zeros_(self.time[-1].weight), nn.init.zeros_(self.time[-1].bias)

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        refuse_condition(self, cond)
        length = x_t.shape[1]
        if length > self.length:
            raise ValueError(f"the net was built for sequences of {self.length} tokens, got {length}")
        embeds = self.bert.get_input_embeddings()(x_t)
        if self.time is not None:
            embeds = embeds + self.time(timestep_embedding(t, self.hidden))[:, None]
        if self.input_dim is None:
            return self.bert(inputs_embeds=embeds).logits
        return self.output(self.bert(inputs_embeds=embeds).last_hidden_state)
