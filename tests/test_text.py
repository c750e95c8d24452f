"""Text data, tokenizers and text measures: poems round-trip, the split keeps poems whole,
user text files work in both units, and bad text ends in a clear message."""

import pytest
import torch

from udm.data import Poems, TextFile
from udm.data.tokenizers import char_tokenizer, decode, encode, tokenizer_from_state, tokenizer_state
from udm.errors import UdmError
from udm.jobs.generate import encode_template
from udm.metrics.text import text_metrics


@pytest.fixture(scope="module")
def quatrains():
    data = Poems(form="quatrain")
    data.setup()
    return data


def test_poems_are_read_skipping_malformed_entries(quatrains):
    assert quatrains.skipped >= 5  # entries whose lines are character lists, with notes, with lost characters, repeated
    n_verses = (len(quatrains.train) + len(quatrains.test)) // 2
    assert 7000 <= n_verses <= 7418
    assert not any("□" in t for t in quatrains.train_texts)
    assert quatrains.train.shape[1] == 32 and quatrains.train.dtype == torch.long
    verse = Poems(form="verse")
    verse.setup()
    assert verse.train.shape[1] == 64 and len(verse.train) + len(verse.test) == n_verses


def test_tokenizer_round_trips_every_training_poem(quatrains):
    texts = quatrains.decode(quatrains.train)
    assert texts == quatrains.train_texts
    assert all(len(t) == 32 and t[7] in "，。" and t[-1] in "，。" for t in texts)
    tok = tokenizer_from_state(tokenizer_state(quatrains.tokenizer))
    assert encode(tok, texts[:50]) == quatrains.train[:50].tolist()


def test_the_held_out_split_keeps_each_poem_on_one_side(quatrains):
    train, test = set(quatrains.train_texts), set(quatrains.test_texts)
    data = Poems(form="verse")
    data.setup()
    held_out = data.test_texts
    assert all(v[:32] in test and v[32:] in test for v in held_out)  # both halves of a held-out verse are held out
    assert not any(v[:32] in train or v[32:] in train for v in held_out)  # nor does a variant of it sit in training


def test_special_tokens_come_first_and_are_reported(quatrains):
    derived = quatrains.derived
    assert derived["special_ids"] == [0, 1, 2] and derived["mask_id"] == 2
    assert derived["vocab_size"] == len(quatrains.tokenizer) > 4000


def test_text_file_by_line_and_by_window(tmp_path):
    five = ["白日依山盡，黃河入海流。欲窮千里目，更上一層樓。", "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。"] * 10
    path = tmp_path / "five.txt"
    path.write_text("\n".join(five) + "\n\n", encoding="utf-8")
    lines = TextFile(str(path), length=24)
    lines.setup()
    assert len(lines.train) + len(lines.test) == 20 and lines.train.shape[1] == 24
    windows = TextFile(str(path), length=10, unit="window")
    windows.setup()
    assert windows.train.shape[1] == 10
    assert "".join(windows.decode(windows.train[:1])) in "\n".join(five)


@pytest.mark.parametrize(
    "content,kwargs,message",
    [
        ("", {}, "holds no text"),
        ("   \n\n", {}, "holds no text"),
        ("床前明月光", {"unit": "window", "length": 32}, "too short for two windows"),
        ("白日依山盡\n黃河入海流。\n", {"length": 5}, "not 5 tokens long"),
        ("only one line of five\n", {"length": 21}, "need at least 2"),
    ],
)
def test_bad_text_files_name_the_problem(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UdmError, match=message):
        TextFile(str(path), **kwargs).setup()


def test_missing_text_path(tmp_path):
    with pytest.raises(UdmError, match="does not exist"):
        TextFile(str(tmp_path / "nope.txt")).setup()


def test_template_encoding_and_its_errors():
    tok = char_tokenizer(["朝辭白帝彩雲間，千里江陵一日還。"])
    ids = encode_template(tok, "朝辭白帝彩雲間，＿＿＿＿＿＿＿。", "＿", 16)
    assert (ids == tok.mask_token_id).sum() == 7 and decode(tok, ids[:8]) == "朝辭白帝彩雲間，"
    with pytest.raises(UdmError, match="exactly 16"):
        encode_template(tok, "朝辭白帝彩雲間，＿＿。", "＿", 16)
    with pytest.raises(UdmError, match="does not know: 猿"):
        encode_template(tok, "猿辭白帝彩雲間，＿＿＿＿＿＿＿。", "＿", 16)
    with pytest.raises(UdmError, match="no blanks"):
        encode_template(tok, "朝辭白帝彩雲間，千里江陵一日還。", "＿", 16)
    with pytest.raises(UdmError, match="empty"):
        encode_template(tok, "", "＿", 16)


def test_text_measures_on_known_and_broken_poems(quatrains):
    train = quatrains.train_texts
    real = text_metrics(train[:200], train)
    assert real["form_accuracy"] == 1.0 and real["copy_rate"] == 1.0
    broken = [t[1:] + "，" for t in train[:10]]  # punctuation shifted by one
    assert text_metrics(broken, train)["form_accuracy"] == 0.0
    assert text_metrics(["山山山山山山山，山山山山山山山。" * 2], train)["distinct_chars"] == 1.0


def test_a_local_transformers_tokenizer_folder_works(tmp_path):
    lines = ["白日依山盡，黃河入海流。", "床前明月光，疑是地上霜。"] * 5
    char_tokenizer(lines).save_pretrained(tmp_path / "tok")
    path = tmp_path / "two.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    data = TextFile(str(path), length=12, tokenizer=str(tmp_path / "tok"), test_fraction=0.2)
    data.setup()
    assert data.derived["mask_id"] == 2 and data.decode(data.train[:1])[0] in lines
    with pytest.raises(UdmError, match="does not exist"):
        TextFile(str(path), length=12, tokenizer=str(tmp_path / "none")).setup()
