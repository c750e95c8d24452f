"""A transformers BERT encoder as the x0-predictor of token processes, built from config, no download.

BertForMaskedLM from a BertConfig, trained from scratch: token ids [B, L] in, logits
[B, L, V] out. With time_conditioning, a sinusoidal embedding of t (through a small
MLP, zero-initialised so it starts as a plain MLM) is added to every token embedding,
which the edit process needs to know how many tokens are corrupted; absorbing masks
show their own count and can do without.

With `input_dim` the net works on vectors instead of ids (the encoding model's Gaussian
diffusion of token embeddings): x_t [B, L, input_dim] is projected into the encoder
(BertModel, no MLM head) and its last hidden states back to [B, L, input_dim].

Conditions (udm.conditioning; -1 is the null value, cond=None is null for the whole batch):
num_classes: cond is a class label [B] (a poet, a text label) whose learned embedding (one
more row for the null class) is added to every token embedding, like the time embedding;
prompt_length: cond is a prompt of token ids [B, P] (a poem's title) read as a prefix segment
(token type 1 for the sequence, 0 for the prompt) that the process never corrupts: the net
attends to it and its outputs are dropped. The null prompt is a learned embedding at every
prefix position. Without either, the net is unconditional and refuses a condition.
"""

from __future__ import annotations

from torch import Tensor, nn

import torch

from udm.errors import UdmError
from udm.nets.conditioning import class_rows, refuse_condition
from udm.nets.unet import timestep_embedding


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
        num_classes: int | None = None,
        prompt_length: int | None = None,
    ):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM, BertModel

        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give net.vocab_size (token ids in, logits out) or net.input_dim (vectors in and out), not both")

        if hidden % heads:
            raise ValueError(f"net.hidden={hidden} must be a multiple of net.heads={heads}")
        if num_classes is not None and prompt_length is not None:
            raise ValueError("give net.num_classes (a class label per sample) or net.prompt_length (a prompt prefix), not both")
        for key, value in (("num_classes", num_classes), ("prompt_length", prompt_length)):
            if value is not None and value < 1:
                raise ValueError(f"net.{key} must be positive (or null: no such condition), got {value}")
        if prompt_length is not None and input_dim is not None:
            raise ValueError("a prompt prefix (net.prompt_length) is read as token ids; the vector net (input_dim) takes "
                             "class labels (net.num_classes) only")
        config = BertConfig(
            vocab_size=vocab_size or 1,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate or 4 * hidden,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=length + (prompt_length or 0),
            type_vocab_size=2 if prompt_length else 1,
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
        self.num_classes, self.prompt_length = num_classes, prompt_length
        self.class_emb = nn.Embedding(num_classes + 1, hidden) if num_classes else None  # row num_classes: the null class
        if self.class_emb is not None:  # on the token embeddings' scale: nn.Embedding's N(0, 1) would swamp them
            nn.init.normal_(self.class_emb.weight, std=config.initializer_range)
        self.null_prompt = nn.Parameter(torch.zeros(prompt_length, hidden)) if prompt_length else None
        self.time = None
        if time_conditioning:
            self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            nn.init.zeros_(self.time[-1].weight), nn.init.zeros_(self.time[-1].bias)

    @property
    def uses_time(self) -> bool:
        """Whether the output depends on t (time_conditioning); a net that ignores it may have its output cached."""
        return self.time is not None

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        if self.class_emb is None and self.null_prompt is None:
            refuse_condition(self, cond)
        batch, length = x_t.shape[:2]
        if length > self.length:
            raise ValueError(f"the net was built for sequences of {self.length} tokens, got {length}")
        embeds = self.bert.get_input_embeddings()(x_t)
        if self.time is not None:
            embeds = embeds + self.time(timestep_embedding(t, self.hidden))[:, None]
        if self.class_emb is not None:
            embeds = embeds + self.class_emb(class_rows(cond, self.num_classes, batch, x_t.device))[:, None]
        types = None
        if self.null_prompt is not None:
            prefix = self.prompt_embeds(cond, batch, x_t.device).to(embeds.dtype)
            embeds = torch.cat([prefix, embeds], 1)
            types = torch.cat([torch.zeros(batch, self.prompt_length, dtype=torch.long, device=x_t.device),
                               torch.ones(batch, length, dtype=torch.long, device=x_t.device)], 1)
        if self.input_dim is None:
            out = self.bert(inputs_embeds=embeds, token_type_ids=types).logits
        else:
            out = self.output(self.bert(inputs_embeds=embeds).last_hidden_state)
        return out[:, -length:]

    def prompt_embeds(self, cond: Tensor | None, batch: int, device) -> Tensor:
        """The prefix segment [B, P, hidden]: the prompt's token embeddings, the learned null prompt where cond is -1."""
        P = self.prompt_length
        if cond is None:
            return self.null_prompt.expand(batch, -1, -1)
        if not torch.is_tensor(cond) or cond.dtype != torch.long or cond.shape != (batch, P):
            raise UdmError(f"this net's condition is a prompt of {P} token ids per sample, a LongTensor [{batch}, {P}]; "
                           f"got {getattr(cond, 'dtype', type(cond).__name__)} {list(getattr(cond, 'shape', []))}")
        vocab = self.bert.config.vocab_size
        if bool(((cond < -1) | (cond >= vocab)).any()):
            raise UdmError(f"prompt token ids must lie in 0..{vocab - 1} (or -1 for none)")
        cond = cond.to(device)
        tokens = self.bert.get_input_embeddings()(cond.clamp(min=0))
        return torch.where((cond < 0)[..., None], self.null_prompt.to(tokens.dtype), tokens)
