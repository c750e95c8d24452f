"""Tokenizers for text diffusion, all as transformers fast tokenizers.

`char_tokenizer(texts)` builds a character-level one ([PAD], [UNK], [MASK] first, then
every character of the texts) from the `tokenizers` library's WordLevel model; any local
transformers tokenizer folder works too (subword ones included: BPE, WordPiece, ...).
`tokenizer_state` / `tokenizer_from_state` turn either into plain strings, so the tokenizer
travels inside the checkpoint and loads with weights_only=True.

Variable-length text (data.lengths=variable, udm.data.lengths) ends every text with the
tokenizer's end token (eos_token; the character tokenizer's is [EOS], id 3) and pads the
rest of the row: `decode` reads a row up to its first end token and skips the padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from udm.errors import UdmError

SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}
END = {"eos_token": "[EOS]"}  # the end of a variable-length text
NAMES = ("pad_token", "unk_token", "mask_token", "eos_token")  # the special tokens a tokenizer's state names


def wrap(backend, special: dict[str, str]):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **special)


def char_tokenizer(texts: Iterable[str], end: bool = False):
    """One token per character seen in `texts` (sorted, so the ids do not depend on text order). end=True adds
    [EOS] after [PAD], [UNK], [MASK] (variable-length text); without it the ids are those udm always gave."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = sorted(set().union(*map(set, texts)))
    if not chars:
        raise UdmError("cannot build a character tokenizer from empty text")
    special = {**SPECIAL, **(END if end else {})}
    vocab = {token: i for i, token in enumerate(special.values())}
    vocab.update({c: len(special) + i for i, c in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=SPECIAL["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    return wrap(backend, special)


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
    """Plain strings that rebuild `tok` exactly: the backend's JSON and the special tokens' names (a state
    written before udm knew end tokens names no eos_token, and rebuilds a tokenizer without one)."""
    state = {"json": tok.backend_tokenizer.to_str()}
    for name in NAMES:
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


def end_and_pad(tok) -> tuple[int, int]:
    """The ids that close a variable-length text: the end token's and the padding's (the end token's again where
    the tokenizer has no pad token, as GPT-2's); UdmError without an end token."""
    if tok.eos_token_id is None:
        raise UdmError("variable-length text (data.lengths=variable) ends every text with the tokenizer's end token "
                       "(eos_token), and this tokenizer has none; add one to it (tok.add_special_tokens({'eos_token': "
                       "'[EOS]'}), then save_pretrained)")
    return tok.eos_token_id, tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id


def content(tok, ids) -> list[int]:
    """The ids a row stands for: those before its first end token, padding left out (a row of fixed-length text
    holds neither, and stays as it is)."""
    ids = [int(i) for i in ids]
    end, pad = tok.eos_token_id, tok.pad_token_id
    if end is not None and end in ids:
        ids = ids[: ids.index(end)]
    return [i for i in ids if i != pad] if pad is not None else ids


def decode(tok, ids) -> str:
    """A row of ids as text, by the tokenizer's own decoder (its JSON; no transformers clean-up, so the text is
    the same from the data module and from a checkpoint's tokenizer state)."""
    return tok.decode(content(tok, ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def unknown_characters(tok, text: str) -> list[str]:
    """The pieces of `text` that the tokenizer maps to its unknown token."""
    unk = tok.unk_token_id
    if unk is None:
        return []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
