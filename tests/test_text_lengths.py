"""Variable-length text (data.lengths=variable) and subword tokenizers: lines become rows of their ids, [EOS] and
[PAD]; the token process generates [EOS]/[PAD] and an oracle returns the padded rows; decoding stops at the end
token; the length measures match their closed form; too-long lines are cut and counted; a BPE tokenizer folder
trains and generates end to end; fixed-length text and old checkpoints' tokenizers stay exactly as they were."""

import pytest
import torch
from omegaconf import OmegaConf

from udm.data import TextFile
from udm.data.lengths import pad_rows, text_lengths
from udm.data.tokenizers import char_tokenizer, decode, encode, tokenizer_from_state, tokenizer_state
from udm.errors import UdmError
from udm.metrics.lengths import length_measures
from udm.metrics.text import TextMeasures, lines, text_metrics
from udm.processes import TokenMask, TokenReplace
from udm.samplers import Improved

from .conftest import compose_train

PAD, UNK, MASK, EOS = 0, 1, 2, 3
SHORT = ["the cat sat.", "a dog ran far, and slept!", "hi", "where is the red hat?", "we go home now."]

# A fixed-length character tokenizer's state as udm wrote it into checkpoints before it knew end tokens.
OLD_STATE = {
    "json": '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"[PAD]","single_word":'
            'false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":1,"content":"[UNK]","single_'
            'word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},{"id":2,"content":"[MASK]",'
            '"single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,'
            '"pre_tokenizer":{"type":"Split","pattern":{"Regex":"[\\\\s\\\\S]"},"behavior":"Isolated","invert":false},'
            '"post_processor":{"type":"TemplateProcessing","single":[{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Se'
            'quence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{}},"decoder":{"type'
            '":"Fuse"},"model":{"type":"WordLevel","vocab":{"[PAD]":0,"[UNK]":1,"[MASK]":2,"。":3,"依":4,"光":5,"前":6,'
            '"山":7,"床":8,"日":9,"明":10,"月":11,"白":12,"盡":13,"，":14},"unk_token":"[UNK]"}}',
    "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]",
}


def text_file(tmp_path, texts, name="lines.txt"):
    path = tmp_path / name
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return str(path)


def variable_data(tmp_path, texts=SHORT * 4, length=28, **kwargs):
    data = TextFile(text_file(tmp_path, texts), length=length, lengths="variable", test_fraction=0.2, **kwargs)
    data.setup()
    return data


def test_variable_lines_are_ids_end_and_padding_and_decode_back(tmp_path):
    data = variable_data(tmp_path)
    tok = data.tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.mask_token_id, tok.eos_token_id) == (PAD, UNK, MASK, EOS)
    for text, row in zip(data.train_texts, data.train.tolist()):
        ids = encode(tok, [text])[0]
        assert row == ids + [EOS] + [PAD] * (28 - len(ids) - 1)
    assert data.decode(data.train) == data.train_texts and data.decode(data.test) == data.test_texts
    assert data.derived["special_ids"] == [UNK, MASK]  # [EOS] and [PAD] are generated like any other token
    # decoding stops at the first end token and leaves padding out wherever the model wrote it
    hi = encode(tok, ["hi"])[0]
    assert decode(tok, [hi[0], PAD, hi[1], EOS, *hi, PAD]) == "hi"
    assert decode(tok, hi * 14) == "hi" * 14  # no end token: the whole row


def test_a_line_longer_than_data_length_is_cut_and_counted(tmp_path, capsys):
    long = "a very long line that runs on and on."
    data = variable_data(tmp_path, [*SHORT * 4, long, long, long], length=30, split_seed=1)
    said = capsys.readouterr().err
    n_test = data.test_texts.count(long)
    assert f"{3 - n_test} of {len(data.train)} training texts are longer than data.length=30 tokens (the longest has 37)" in said
    assert "Set data.length=38 to keep them whole" in said and data.cut["held-out"][0] == n_test
    row = data.train[data.train_texts.index(long)]
    assert EOS not in row.tolist() and data.decode(row[None]) == [long[:30]]
    exact = pad_rows([[5] * 4, [5] * 5, [5] * 6], 5, EOS, PAD)
    assert exact.ids.tolist() == [[5, 5, 5, 5, EOS], [5] * 5, [5] * 5] and exact.cut == 1 and exact.longest == 6


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lengths": "ragged"}, "data.lengths must be 'fixed'"),
        ({"lengths": "variable", "unit": "window"}, "windows are always data.length tokens"),
        ({"length": 9}, "or take lines of any length with data.lengths=variable"),
    ],
)
def test_bad_length_settings_name_the_problem(tmp_path, kwargs, message):
    with pytest.raises(UdmError, match=message):
        TextFile(text_file(tmp_path, SHORT * 4), **kwargs).setup()


def test_a_tokenizer_folder_without_an_end_token_is_refused_for_variable_lines(tmp_path):
    char_tokenizer(SHORT).save_pretrained(tmp_path / "tok")
    with pytest.raises(UdmError, match=r"data.lengths=variable ends every line with the tokenizer's end token \(eos_token\)"):
        TextFile(text_file(tmp_path, SHORT * 4), lengths="variable", tokenizer=str(tmp_path / "tok")).setup()


@pytest.mark.parametrize("kind", [TokenMask, TokenReplace])
def test_the_process_generates_end_and_padding_and_an_oracle_returns_the_padded_rows(tmp_path, kind):
    data = variable_data(tmp_path)
    derived = data.derived
    special = [*derived["special_ids"], derived["mask_id"]]
    p = (TokenMask(length=28, vocab_size=derived["vocab_size"], special_ids=derived["special_ids"], mask_id=MASK)
         if kind is TokenMask else TokenReplace(length=28, vocab_size=derived["vocab_size"], special_ids=special))
    logits = p.logits(torch.zeros(1, 28, derived["vocab_size"]))
    assert logits[..., EOS].isfinite().all() and logits[..., PAD].isfinite().all() and logits[..., MASK].isinf().all()
    x0 = data.train
    g = torch.Generator().manual_seed(0)
    x_T = p(x0, torch.full((len(x0),), p.T), p.sample_noise(x0, g))

    def oracle(x_t, t):
        return torch.nn.functional.one_hot(x0, derived["vocab_size"]).float() * 1e4

    out = Improved(steps=7)(p, oracle, x_T, generator=g)
    assert torch.equal(out, x0) and data.decode(out) == data.train_texts


def test_length_measures_against_their_closed_form():
    n = 9  # a text token; rows of L = 4
    rows = torch.tensor([[n, EOS, PAD, PAD], [n, PAD, EOS, n], [n, n, EOS, n], [n, PAD, n, n]])  # lengths 1, 1, 2, 3
    held = torch.tensor([[n, n, EOS, PAD]] * 3 + [[n] * 4])  # 2, 2, 2, 4
    assert text_lengths(rows, EOS, PAD).tolist() == [1, 1, 2, 3]
    m = length_measures(rows, held, held, EOS, PAD)
    # p = (0, 1/2, 1/4, 1/4, 0), q = (0, 0, 3/4, 0, 1/4): TV = (1/2 + 1/2 + 1/4 + 1/4) / 2
    assert m["mean_length"] == 1.75 and m["held_out_mean_length"] == 2.5 and m["length_tv"] == 0.75
    assert m["length_tv_train"] == 0.0  # the training rows here are the held-out ones: same histogram at this n
    assert text_lengths(torch.tensor([[n, EOS, EOS, EOS]]), EOS, EOS).tolist() == [1]  # padding with the end token


def test_text_measures_of_variable_text_report_lengths_and_no_form(tmp_path):
    data = variable_data(tmp_path)
    model = type("Model", (), {"tokenizer": lambda self: data.tokenizer, "decode": lambda self, s: data.decode(s)})()
    context = type("Context", (), {"data": data})()
    measures = TextMeasures().compute(model, data.test, context)
    assert "form_accuracy" not in measures  # the training lines have many lengths: no form to check
    assert measures["copy_rate"] == 1.0 and measures["length_tv"] == 0.0
    assert measures["mean_length"] == measures["held_out_mean_length"] == sum(map(len, data.test_texts)) / len(data.test)
    assert "form_accuracy" in text_metrics(["ab", "cd"], ["xy", "zw"])  # one length: a form
    assert text_metrics(["a b", "a  b"], ["x y"])["distinct_chars"] == 2.0  # spaces are not characters of the text
    assert lines("we sat, and the cat slept.") == ["we sat", "and the cat slept"]


def test_fixed_length_text_and_an_old_checkpoint_tokenizer_stay_as_they_were(tmp_path):
    texts = ["白日依山盡，", "床前明月光。"]
    assert tokenizer_state(char_tokenizer(texts)) == OLD_STATE  # fixed-length text: the same ids, the same state
    old = tokenizer_from_state(OLD_STATE)
    assert old.eos_token_id is None
    row = encode(old, ["白日依山盡，床前明月光。"])[0]
    assert row == [12, 9, 4, 7, 13, 14, 8, 6, 10, 11, 5, 3]  # 。 is id 3 there, [EOS]'s id in a variable tokenizer
    assert decode(old, row) == old.decode(row, skip_special_tokens=False) == "白日依山盡，床前明月光。"
    poems = TextFile(text_file(tmp_path, ["白日依山盡，黃河入海流。", "床前明月光，疑是地上霜。"] * 5), length=12)
    poems.setup()
    assert poems.derived["special_ids"] == [PAD, UNK, MASK] and poems.tokenizer.eos_token_id is None
    assert "form_accuracy" in text_metrics(poems.train_texts, poems.train_texts)


ENGLISH = [f"{who} {verb} {what}{end}" for who in ("the cat", "a dog", "my old friend", "we")
           for verb in ("saw", "found", "ran after") for what in ("the red ball", "a bird, then slept", "it")
           for end in (".", "!")]


def bpe_folder(folder, texts):
    """A tiny BPE tokenizer (sentencepiece-style word starts, so decoding gives back the spaces) saved as a
    transformers tokenizer folder with [PAD], [UNK], [MASK] and [EOS]."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=90, special_tokens=["[PAD]", "[UNK]", "[MASK]", "[EOS]"],
                                                           show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                            eos_token="[EOS]").save_pretrained(folder)
    return str(folder)


def test_a_subword_tokenizer_trains_and_generates_variable_text_end_to_end(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from udm.cli import CONF_DIR
    from udm.jobs.generate import generate_text
    from udm.jobs.train import train
    from udm.models import open_model

    folder = bpe_folder(tmp_path / "bpe", ENGLISH)
    path = text_file(tmp_path, ENGLISH)
    data = TextFile(path, length=12, lengths="variable", tokenizer=folder, test_fraction=0.2)
    data.setup()
    assert data.decode(data.train) == data.train_texts and data.decode(data.test) == data.test_texts  # spaces kept
    assert len(encode(data.tokenizer, ["my old friend ran after a bird, then slept!"])[0]) < 20  # subwords, not characters
    cfg = compose_train("experiment=quatrain_mask", "data=text_file", f"data.path={path}", f"data.tokenizer={folder}",
                        "data.lengths=variable", "data.length=12", "data.test_fraction=0.2", "net.hidden=32", "net.layers=1",
                        "net.heads=2", "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
                        "val_samples=2", "final_samples=2", f"out_dir={tmp_path / 'run'}", "~callbacks.progress")
    result = train(cfg)
    model = open_model(result["checkpoint"])
    assert model.tokenizer().eos_token_id == data.tokenizer.eos_token_id  # the end token travels in the checkpoint
    assert model.decode(data.test) == data.test_texts
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        gen = compose(config_name="generate", overrides=[f"ckpt={result['checkpoint']}", "n=6", "device=cpu",
                                                         "progress=false", "show=0", "fast=plain"], return_hydra_config=True)
    HydraConfig.instance().set_config(gen)
    report = generate_text(gen)
    texts = report["texts"]
    assert len(texts) == 6 and not any(mark in t for t in texts for mark in ("[PAD]", "[EOS]", "[MASK]"))
    m = report["metrics"]
    measured = text_metrics(texts, data.train_texts)  # the checkpoint's data: the same file, split and tokenizer
    assert "form_accuracy" not in m and {k: m[k] for k in ("copy_rate", "distinct_chars")} == \
        {k: measured[k] for k in ("copy_rate", "distinct_chars")} and "length_tv" in m
    assert m["held_out_mean_length"] == pytest.approx(sum(len(encode(data.tokenizer, [t])[0]) for t in data.test_texts)
                                                      / len(data.test_texts))
    assert OmegaConf.select(OmegaConf.create(model.recipe), "data.lengths") == "variable"
