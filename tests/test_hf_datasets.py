"""Hugging Face datasets on disk, offline: images with labels from save_to_disk and from a hub-cache-like folder
of parquet files, and a text corpus cut into subword windows; end to end through udm-train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import train_in_process
from tests.test_text_lengths import ENGLISH, bpe_folder
from udm.data import HFImages, HFText
from udm.data.tokenizers import encode
from udm.errors import UdmError

datasets = pytest.importorskip("datasets")
NAMES = ["zero", "one", "two"]


def image_splits(seed: int = 0) -> tuple[object, np.ndarray, np.ndarray]:
    """A DatasetDict (train 12, test 6) of 12x8 RGB images with ClassLabel labels, and its pixels and labels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(18, 8, 12, 3), dtype=np.uint8)  # H 8, W 12: centre-cropped to 8x8
    labels = rng.integers(0, 3, size=18)
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=NAMES)})

    def split(rows):
        return datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels[rows]], "fine": labels[rows].tolist()},
                                          features=features)

    return datasets.DatasetDict(train=split(slice(0, 12)), test=split(slice(12, 18))), pixels, labels


def test_images_from_save_to_disk_with_their_labels_and_named_test_split(tmp_path):
    splits, pixels, labels = image_splits()
    splits.save_to_disk(str(tmp_path / "saved"))
    data = HFImages(str(tmp_path / "saved"), column="img", label_column="fine", test_split="test", image_size=8,
                    condition="label")
    data.setup("fit")
    expected = torch.from_numpy(pixels[:, :, 2:10].transpose(0, 3, 1, 2).copy()).float() / 255 * 2 - 1  # the centre 8 columns
    assert torch.equal(data.train, expected[:12]) and torch.equal(data.test, expected[12:])
    assert torch.equal(data.train_cond, torch.from_numpy(labels[:12])) and data.class_names == NAMES
    assert data.recipe()["condition"] == {"kind": "label", "classes": 3, "names": NAMES}
    with pytest.raises(UdmError, match=r"data.column='image': the dataset at .* has the columns \['img', 'fine'\]"):
        HFImages(str(tmp_path / "saved"), image_size=8).setup()
    with pytest.raises(UdmError, match=r"data.split='validation': the dataset at .* has the splits \['test', 'train'\]"):
        HFImages(str(tmp_path / "saved"), column="img", split="validation", image_size=8).setup()
    with pytest.raises(UdmError, match="is not a folder"):
        HFImages(str(tmp_path / "missing"), image_size=8).setup()


def test_a_hub_cache_snapshot_of_parquet_files_reads_offline_with_a_held_out_fraction(tmp_path):
    splits, pixels, _ = image_splits(seed=1)
    snapshot = tmp_path / "datasets--someone--tiny" / "snapshots" / "0123abc"
    (snapshot / "data").mkdir(parents=True)
    splits["train"].to_parquet(str(snapshot / "data" / "train-00000-of-00001.parquet"))
    splits["test"].to_parquet(str(snapshot / "data" / "test-00000-of-00001.parquet"))
    data = HFImages(str(snapshot), column="img", image_size=8, channels=1, test_fraction=0.25)
    data.setup("fit")
    assert data.train.shape == (9, 1, 8, 8) and data.test.shape == (3, 1, 8, 8)  # 12 training rows, a quarter held out
    gray = np.asarray([np.asarray(Image.fromarray(p).convert("L"))[:, 2:10] for p in pixels[:12]])  # the centre 8 columns
    expected = torch.from_numpy(gray[:, None]).float() / 255 * 2 - 1
    train, test = data.split_indices(12)
    assert torch.equal(data.train, expected[train]) and torch.equal(data.test, expected[test])


def test_a_text_corpus_is_cut_into_subword_windows(tmp_path):
    corpus = datasets.Dataset.from_dict({"text": [" ".join(ENGLISH[i : i + 6]) for i in range(0, len(ENGLISH), 6)]})
    corpus.save_to_disk(str(tmp_path / "corpus"))
    tokenizer = bpe_folder(tmp_path / "bpe", ENGLISH)
    data = HFText(str(tmp_path / "corpus"), length=16, unit="window", tokenizer=tokenizer, test_fraction=0.1)
    data.setup("fit")
    assert data.train.shape[1] == 16 and data.train.dtype == torch.long
    stream = [i for seq in encode(data.tokenizer, data.train_texts) for i in seq]
    assert data.train.flatten().tolist() == stream[: data.train.numel()]  # consecutive windows of the training stream
    lines = HFText(str(tmp_path / "corpus"), length=200, unit="line", lengths="variable", tokenizer=tokenizer)
    lines.setup("fit")
    assert sorted(lines.train_texts + lines.test_texts) == sorted(corpus["text"])
    with pytest.raises(UdmError, match="can condition on nothing"):
        HFText(str(tmp_path / "corpus"), condition="label")


def test_udm_train_reads_a_saved_image_dataset_offline(tmp_path):
    splits, _, _ = image_splits()
    splits.save_to_disk(str(tmp_path / "saved"))
    run = tmp_path / "run"
    train_in_process("experiment=digits_smoke", "data=hf", f"data.path={tmp_path / 'saved'}", "data.column=img",
            "data.label_column=fine", "data.condition=label", "data.test_split=test", "data.image_size=8",
            "net.attention_resolutions=[4]", "trainer.max_steps=4", "trainer.val_check_interval=4", "val_samples=4",
            "final_samples=4", f"hydra.run.dir={run}")
    from udm.models import open_model

    model = open_model(run)
    assert model.condition == {"kind": "label", "classes": 3, "names": NAMES} and model.shape == [3, 8, 8]
