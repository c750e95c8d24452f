"""What udm-generate was asked to condition on: author=NAME / label=NAME (or authors=all / labels=all), title=TEXT.

A class-like condition (a poet, a text file's label) becomes its index [n] among the names the checkpoint's
recipe records; a title becomes its token ids [n, P], cut or padded to the P tokens the model was trained on.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import Tensor

from udm.data.text import prompt_ids
from udm.data.tokenizers import encode, unknown_characters
from udm.errors import UdmError
from udm.jobs.conditions import class_index, describe_guidance
from udm.models import TrainedModel

CLASS_KEYS = {"author": "authors", "label": "labels"}  # one class / every class, per kind of class-like condition


def given(cfg: DictConfig) -> dict[str, object]:
    """The condition keys set on the command line."""
    keys = [*CLASS_KEYS, *CLASS_KEYS.values(), "title"]
    return {k: cfg.get(k) for k in keys if cfg.get(k) is not None}


def requested_text_condition(model: TrainedModel, cfg: DictConfig, n: int) -> Tensor | None:
    """The condition of every text (on the model's device), or None for unconditional generation."""
    asked = given(cfg)
    if not asked:
        if cfg.get("guidance") is not None and cfg.get("guide") is None:
            raise UdmError("guidance steers the texts toward a condition: give author=NAME, label=NAME or title=TEXT with it "
                           "(or guide=CKPT: autoguidance by a weaker model)")
        return None
    if len(asked) > 1:
        raise UdmError(f"give one condition, not {' and '.join(asked)}")
    (key, value), = asked.items()
    condition = model.condition or {}
    kind = condition.get("kind")
    wanted = "title" if key == "title" else key if key in CLASS_KEYS else next(k for k, v in CLASS_KEYS.items() if v == key)
    if kind != wanted:
        trained = f"with data.condition={kind}" if kind else "without a condition"
        raise UdmError(f"{key}=... needs a model trained with data.condition={wanted}; {model.checkpoint_path} was trained "
                       f"{trained}" + (f" (use {kind}=...)" if kind else ""))
    if key == "title":
        return title_ids(model, str(value), int(condition["length"])).expand(n, -1).clone()
    names = [str(name) for name in condition["names"]]
    if key in CLASS_KEYS.values():
        if value != "all":
            raise UdmError(f"{key} takes 'all' (n texts for every {wanted}, one after another), got {value!r}")
        return torch.arange(len(names), device=model.device).repeat_interleave(n)
    return torch.full((n,), class_index(names, str(value), wanted), dtype=torch.long, device=model.device)


def title_ids(model: TrainedModel, title: str, length: int) -> Tensor:
    """The title's token ids [1, length], cut to the length the model reads and padded with [PAD]."""
    if not title.strip():
        raise UdmError("title is empty; give the characters of a title, e.g. \"title='春望'\"")
    tok = model.tokenizer()
    unknown = unknown_characters(tok, title)
    if unknown:
        raise UdmError(f"title has characters the tokenizer does not know: {' '.join(unknown)}")
    ids = encode(tok, [title])[0]
    if len(ids) > length:
        print(f"udm-generate: the model reads the first {length} tokens of a title; "
              f"{tok.decode(ids[length:])!r} is left out")
    return prompt_ids(tok, [title], length).to(model.device)


def describe(cfg: DictConfig) -> str:
    """The file-name part of the request: -author-白居易-w2, -authors-all, -title-春望 ..."""
    part = "".join(f"-{k}-{v}" for k, v in given(cfg).items())
    return (part + describe_guidance(cfg)).replace("/", "_")
