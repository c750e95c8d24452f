"""Hugging Face datasets read from disk, offline: images (`data=hf`) and text (`data=hf_text`).

    udm-train data=hf data.path=DIR data.column=image [data.label_column=label data.condition=label]
    udm-train data=hf_text data.path=DIR data.column=text data.unit=window data.length=128 data.tokenizer=TOK_DIR

`path` is a folder on disk, one of:
* what `Dataset.save_to_disk` or `DatasetDict.save_to_disk` wrote (read with `datasets.load_from_disk`);
* a dataset's files: a folder of parquet / arrow / json(l) / csv files, or an image folder, read with
  `datasets.load_dataset(folder)`, which infers splits from the file names (train-*.parquet, data/test/...).
  A dataset already in the Hugging Face hub cache is such a folder: its snapshot,
  ~/.cache/huggingface/hub/datasets--OWNER--NAME/snapshots/REVISION.
Nothing is fetched: a path that is not a folder is refused, and datasets runs with the hub switched off.
`split` picks the training split of a dataset with several; `test_split` (optional) the held-out one, else
`test_fraction` of the training split is held out by `split_seed`.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from udm.data.images import ImageData, square, to_unit_range
from udm.data.text import TextFile
from udm.errors import UdmError


def datasets_module():
    try:
        import datasets
    except ImportError:
        raise UdmError("data=hf and data=hf_text read with the datasets package: pip install 'udm[hf]' "
                       "(or pip install datasets)") from None
    return datasets


@contextmanager
def hub_off():
    """datasets with the hub switched off while it reads (its own flag, restored after), so no read can fetch."""
    import datasets.config as config

    saved = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE = saved


def open_splits(path: Path) -> Any:
    """The datasets.DatasetDict (or Dataset) stored at path, read locally."""
    datasets = datasets_module()

    if not path.is_dir():
        raise UdmError(f"data.path={str(path)!r} is not a folder; data=hf reads a dataset saved with save_to_disk, or "
                       f"a folder of its files (parquet, arrow, json, csv, images), e.g. a hub cache snapshot")
    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    with hub_off():
        try:
            return datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
        except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
            raise UdmError(f"data.path={str(path)!r} is not a dataset datasets can read offline: "
                           f"{str(e).splitlines()[0][:200]}") from None


def pick_split(splits: Any, name: str, key: str, path: Path):
    """One split of a DatasetDict by name (a bare Dataset is its only split)."""
    import datasets

    if isinstance(splits, datasets.Dataset):
        if key == "data.test_split":
            raise UdmError(f"data.path={str(path)!r} holds one split, so data.test_split={name!r} names none; "
                           f"leave it null to hold out data.test_fraction of it")
        return splits
    if name not in splits:
        raise UdmError(f"{key}={name!r}: the dataset at {str(path)!r} has the splits {sorted(splits)}")
    return splits[name]


def check_column(dataset, column: str, key: str, path: Path) -> None:
    if column not in dataset.column_names:
        raise UdmError(f"{key}={column!r}: the dataset at {str(path)!r} has the columns {dataset.column_names}")


def pixels(item: Any, size: int, mode: str, where: str) -> np.ndarray:
    """uint8 pixels [size, size(, 3)] of one column value: a decoded image, its bytes, or an array of pixels."""
    from PIL import Image

    if isinstance(item, dict) and item.get("bytes") is not None:
        item = Image.open(io.BytesIO(item["bytes"]))
    if isinstance(item, (np.ndarray, list)):
        array = np.asarray(item)
        if array.dtype.kind not in "biuf" or array.ndim not in (2, 3):
            raise UdmError(f"{where} is not an image: an array of {array.dtype} with shape {list(array.shape)}")
        if array.dtype.kind == "f":  # float pixels are read as [0, 1] (what datasets' Array features hold)
            if array.min() < 0 or array.max() > 1:
                raise UdmError(f"{where} holds float pixels in [{array.min():.3g}, {array.max():.3g}]; udm reads float "
                               f"images as [0, 1] (store uint8 pixels or scale them)")
            array = np.rint(array * 255)
        item = Image.fromarray(array.astype(np.uint8))
    if not isinstance(item, Image.Image):
        raise UdmError(f"{where} is not an image but a {type(item).__name__}; data.column names the image column")
    return square(item, size, mode)


class HFImages(ImageData):
    """The images of one column of a Hugging Face dataset on disk, made square at image_size (shorter side resized,
    centre cut out), in `channels` (1: L, 3: RGB); with condition=label, classes from `label_column`."""

    name = "hf"

    def __init__(self, path: str, column: str = "image", label_column: str = "label", split: str = "train",
                 test_split: str | None = None, image_size: int = 32, channels: int = 3, **kwargs):
        super().__init__(image_size=image_size, channels=channels, **kwargs)
        if channels not in (1, 3):
            raise UdmError(f"data.channels must be 1 or 3 for images, got {channels}")
        self.path, self.column, self.label_column = Path(path).expanduser(), column, label_column
        self.split, self.test_split = split, test_split
        self._rows: tuple[Tensor, Tensor | None] | None = None

    def parts(self) -> list:
        splits = open_splits(self.path)
        parts = [pick_split(splits, self.split, "data.split", self.path)]
        if self.test_split is not None:
            parts.append(pick_split(splits, self.test_split, "data.test_split", self.path))
        for part in parts:
            check_column(part, self.column, "data.column", self.path)
            if self.condition == "label":
                check_column(part, self.label_column, "data.label_column", self.path)
        return parts

    def read(self) -> tuple[Tensor, Tensor | None]:
        """(images [N, C, H, W] in [-1, 1], labels [N] or None): the training split, then the held-out one if named."""
        if self._rows is not None:
            return self._rows
        parts = self.parts()
        mode = "L" if self.channels == 1 else "RGB"
        arrays, labels = [], []
        for part in parts:
            for i, item in enumerate(part.select_columns([self.column])):
                arrays.append(pixels(item[self.column], self.image_size, mode, f"row {i} of column {self.column!r}"))
            if self.condition == "label":
                labels.extend(int(v) for v in part[self.label_column])
                names = getattr(part.features[self.label_column], "names", None)
                if names:
                    self.class_names = list(names)
        if self.test_split is not None:  # the named split is held out; else test_fraction of `split`
            self.n_train = len(parts[0])
        if len(arrays) == 0:
            raise UdmError(f"the dataset at {str(self.path)!r} holds no images")
        images = np.stack(arrays).reshape(len(arrays), self.image_size, self.image_size, self.channels)
        label_rows = torch.tensor(labels, dtype=torch.long) if self.condition == "label" else None
        if label_rows is not None and len(label_rows) and int(label_rows.min()) < 0:
            raise UdmError(f"data.label_column={self.label_column!r} holds negative labels (unlabelled rows?); "
                           f"class labels must be 0..K-1")
        self._rows = (to_unit_range(images.transpose(0, 3, 1, 2), 255.0), label_rows)
        return self._rows

    def load(self) -> Tensor:
        return self.read()[0]

    def load_labels(self) -> Tensor | None:
        return self.read()[1] if self.condition == "label" else None


class HFText(TextFile):
    """The texts of one column of a Hugging Face dataset on disk: one sample per row (unit=line), or the rows joined
    by newlines and cut into windows of `length` tokens (unit=window: a corpus for a masked LM, with a subword
    tokenizer from a local transformers tokenizer folder)."""

    name = "hf_text"
    conditions = ()

    def __init__(self, path: str, column: str = "text", split: str = "train", **kwargs):
        super().__init__(path=path, **kwargs)
        self.column, self.split = column, split

    def rows(self) -> list[str]:
        part = pick_split(open_splits(self.path), self.split, "data.split", self.path)
        check_column(part, self.column, "data.column", self.path)
        texts = part[self.column]
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise UdmError(f"data.column={self.column!r}: row {bad} holds {type(texts[bad]).__name__}, not text "
                           f"(empty rows must be empty strings, not null)")
        return texts

    def read(self) -> str:
        return "\n".join(self.rows())

    def units(self) -> list[list[str]]:
        if self.unit == "line":
            units = [[row.strip()] for row in self.rows() if row.strip()]
            if not units:
                raise UdmError(f"data.column={self.column!r} of the dataset at {str(self.path)!r} holds no text")
            return units
        return super().units()
