"""Tokenizers for text diffusion, all as transformers fast tokenizers.

`char_tokenizer(texts)` builds a character-level one ([PAD], [UNK], [MASK] first, then
every character of the texts) from the `tokenizers` library's WordLevel model; any local
transformers tokenizer folder works too. `tokenizer_state` / `tokenizer_from_state` turn
either into plain strings, so the tokenizer travels inside the checkpoint and loads
with weights_only=True.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from udm.errors import UdmError

SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}


def wrap(backend, special: dict[str, str]):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special)


def char_tokenizer(texts: Iterable[str]):
    """One token per character seen in `texts` (sorted, so the ids do not depend on text order)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set().union(*map(set, texts)))
    if not chars:
        raise UdmError("cannot build a character tokenizer from empty text")
    vocab = {token: i for i, token in enumerate(SPECIAL.values())}
    vocab.update({c: len(SPECIAL) + i for i, c in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    return wrap(backend, SPECIAL)


def load_tokenizer(path: str):
    """A transformers tokenizer from a local folder (no download); it must be a fast one with a mask token."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UdmError(f"tokenizer folder {folder} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UdmError(f"cannot load a tokenizer from {folder}: {str(e).splitlines()[0]}") from None
    if not getattr(tok, "is_fast", False):
        raise UdmError(f"the tokenizer in {folder} is not a fast (tokenizers-backed) one")
    if tok.mask_token_id is None:
        raise UdmError(f"the tokenizer in {folder} has no mask token; text diffusion needs one")
    return tok


def tokenizer_state(tok) -> dict[str, str]:
    """Plain strings that rebuild `tok` exactly: the backend's JSON and the special tokens' names."""
    state = {"json": tok.backend_tokenizer.to_str()}
    for name in ("pad_token", "unk_token", "mask_token"):
        if getattr(tok, name, None) is not None:
            state[name] = str(getattr(tok, name))
    return state


def tokenizer_from_state(state: dict[str, str]):
    from tokenizers import Tokenizer

    return wrap(Tokenizer.from_str(state["json"]), {k: v for k, v in state.items() if k != "json"})


def special_ids(tok) -> list[int]:
    return sorted(set(tok.all_special_ids))


def encode(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False)["input_ids"] if texts else []


def decode(tok, ids) -> str:
    return tok.decode([int(i) for i in ids], skip_special_tokens=False)


def unknown_characters(tok, text: str) -> list[str]:
    """The pieces of `text` that the tokenizer maps to its unknown token."""
    unk = tok.unk_token_id
    if unk is None:
        return []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
