"""The fluency judge (a small GPT-2 udm trains on the text data, cached as the FID extractor is) and the measures
under it: generative perplexity and unigram entropy against closed forms, the cache, udm-eval's fluency metric,
udm-generate fluency=true, and bad input. Everything runs on a tiny judge of a tiny text file."""

import math
import string

import pytest
import torch
from omegaconf import OmegaConf

from udm.data.tokenizers import encode, tokenizer_from_state
from udm.errors import UdmError
from udm.jobs.judge import cache_path, default_judge, ensure_judge, load_judge
from udm.metrics.fluency import fluency, generative_perplexity, unigram_entropy
from udm.nets.causal_lm import CausalLM

from .test_eval import _one_thread, compose_config, fake_checkpoint  # noqa: F401 (_one_thread: autouse, one torch thread)

LETTERS = string.ascii_lowercase[:20]
TINY_JUDGE = {"net.n_layer": 1, "net.n_embd": 32, "net.n_head": 2, "net.dropout": 0.0, "epochs": 30, "batch_size": 16,
              "lr": 3.0e-3}
TINY_OVERRIDES = [f"judge.{k}={v}" for k, v in TINY_JUDGE.items()]
TINY_NET = ["net.hidden=32", "net.layers=1", "net.heads=2"]


def tiny_judge_cfg(**changes):
    cfg = default_judge()
    for key, value in {**TINY_JUDGE, **changes}.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def walks(n: int = 40, length: int = 12) -> list[str]:
    """Texts a language model can learn: walks around a circle of 20 letters, by steps of 1 or 3."""
    return ["".join(LETTERS[(i + step * j) % 20] for j in range(length)) for i in range(n // 2) for step in (1, 3)]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny untrained text checkpoint of the walks, its data config, and the judge trained on it (cached)."""
    tmp = tmp_path_factory.mktemp("fluency")
    path = tmp / "walks.txt"
    path.write_text("\n".join(walks()) + "\n", encoding="utf-8")
    ckpt = fake_checkpoint(tmp / "walks.ckpt", "data=text_file", f"data.path={path}", "data.length=12", "data.test_fraction=0.1",
                           *TINY_NET, experiment="quatrain_mask")
    data_cfg = torch.load(ckpt, weights_only=True)["udm"]["data"]
    cache = tmp / "cache"
    judge, info = ensure_judge(data_cfg, tiny_judge_cfg(), cache, "cpu", progress=False)
    return tmp, ckpt, data_cfg, cache, judge, info


def shuffled(ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each text's own tokens in a random order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([row[torch.randperm(len(row), generator=generator)] for row in ids])


def test_the_judge_reads_its_training_texts_better_than_their_shuffled_characters(text_run):
    from hydra.utils import instantiate

    *_, data_cfg, _, judge, info = text_run
    data = instantiate(data_cfg)
    data.setup("fit")
    trained, scrambled = generative_perplexity(judge, data.train), generative_perplexity(judge, shuffled(data.train))
    assert trained < 5 and scrambled > 5 * trained, (trained, scrambled)  # 20 letters: uniform guessing scores 20+
    assert info["n_train"] == len(data.train) and info["test_perplexity"] < 5


def test_a_judge_that_knows_nothing_has_the_vocabulary_size_as_perplexity():
    """Zero token embeddings (tied to the output layer) give every token the same logit: perplexity = V exactly,
    over the data's V tokens (the start symbol is no token a text can hold)."""
    judge = CausalLM(vocab_size=7, length=5, n_layer=1, n_embd=8, n_head=2, dropout=0.0)
    with torch.no_grad():
        judge.gpt2.transformer.wte.weight.zero_()
    texts = torch.tensor([[0, 1, 2, 3, 4], [6, 6, 6, 6, 6]])
    assert generative_perplexity(judge, texts) == pytest.approx(7, rel=1e-6)
    assert generative_perplexity(judge, texts.tolist(), batch_size=1) == pytest.approx(7, rel=1e-6)  # lists of ids too


def test_unigram_entropy_against_closed_forms():
    texts = torch.tensor([[5, 5, 5, 5], [0, 1, 2, 3], [9, 9, 4, 4], [7, 7, 8, 2]])
    expected = [0.0, math.log(4), math.log(2), -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))]
    assert unigram_entropy(texts).tolist() == pytest.approx(expected, abs=1e-12)
    k = 6  # k distinct tokens, each once: log k
    assert float(unigram_entropy(torch.arange(100, 100 + k)[None])) == pytest.approx(math.log(k))


def test_fluency_gives_each_number_beside_its_real_reference(text_run):
    *_, judge, _ = text_run
    real = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]) + 3
    repeated = torch.full((3, 4), 5)
    out = fluency(judge, repeated, real)
    assert set(out) == {"gen_ppl", "real_ppl", "entropy", "real_entropy"}
    assert out["entropy"] == 0 and out["real_entropy"] == pytest.approx(math.log(4))
    assert out["gen_ppl"] == pytest.approx(generative_perplexity(judge, repeated))
    assert out["real_ppl"] == pytest.approx(generative_perplexity(judge, real))


def test_a_cached_judge_is_loaded_and_a_changed_data_config_trains_another(text_run, capsys):
    *_, data_cfg, cache, judge, info = text_run
    path = cache_path(data_cfg, cache)
    assert path.parent == cache / "judge" and info["path"] == str(path) and info["id"].startswith(path.stem)
    before = path.stat().st_mtime_ns
    again, again_info = ensure_judge(data_cfg, tiny_judge_cfg(), cache, "cpu", progress=False)
    assert "training" not in capsys.readouterr().out and path.stat().st_mtime_ns == before
    assert again_info["id"] == info["id"]
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), again.state_dict().values()))
    # the key ignores batch_size, and follows what changes the texts or their split
    assert cache_path({**data_cfg, "batch_size": 7}, cache) == path != cache_path({**data_cfg, "split_seed": 1}, cache)
    other = {**data_cfg, "split_seed": 1}
    ensure_judge(other, tiny_judge_cfg(epochs=1), cache, "cpu", progress=False)
    said = capsys.readouterr().out
    assert "training the fluency judge" in said and str(cache_path(other, cache)) in said
    # the cache is keyed by the data alone: other judge settings are said, and the cached judge is used
    ensure_judge(data_cfg, tiny_judge_cfg(epochs=2), cache, "cpu", progress=False)
    said = capsys.readouterr().out
    assert "trained with other settings" in said and "training" not in said and path.stat().st_mtime_ns == before


def test_the_judge_file_loads_with_weights_only_and_training_is_reproducible(text_run, tmp_path):
    *_, data_cfg, cache, judge, info = text_run
    payload = torch.load(cache_path(data_cfg, cache), weights_only=True)
    assert payload["net"]["vocab_size"] == 23 and payload["net"]["length"] == 12  # 20 letters + [PAD], [UNK], [MASK]
    assert payload["settings"]["epochs"] == 30 and payload["tokenizer"] == torch.load(text_run[1], weights_only=True)["udm"]["tokenizer"]
    retrained, _ = ensure_judge(data_cfg, tiny_judge_cfg(), tmp_path, "cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(judge.state_dict().values(), retrained.state_dict().values()))


def test_bad_input_is_refused_clearly(text_run, tmp_path):
    *_, data_cfg, _, judge, _ = text_run
    with pytest.raises(UdmError, match="no generated texts to score"):
        fluency(judge, [], torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(UdmError, match="no texts to score"):
        unigram_entropy(torch.zeros(0, 12, dtype=torch.long))
    with pytest.raises(UdmError, match="token ids of equal length"):
        generative_perplexity(judge, [[1, 2, 3], [1, 2]])
    with pytest.raises(UdmError, match=r"token ids must lie in 0\.\.22"):
        generative_perplexity(judge, torch.tensor([[1, 2, 23]]))
    path = cache_path(data_cfg, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    with pytest.raises(UdmError, match=f"cannot read the fluency judge {path}.*retrain=true"):
        ensure_judge(data_cfg, tiny_judge_cfg(), tmp_path, "cpu", progress=False)
    torch.save({"format": "udm-fid-extractor/1", "state_dict": {}}, path)
    with pytest.raises(UdmError, match=f"{path} is not a udm fluency judge"):
        load_judge(path)
    with pytest.raises(UdmError, match="Digits data holds no text"):
        ensure_judge({"_target_": "udm.data.Digits"}, tiny_judge_cfg(), tmp_path, "cpu", progress=False)


def test_udm_eval_reports_fluency_of_a_text_checkpoint_and_refuses_it_for_images(text_run, capsys):
    from udm.jobs.evaluate import evaluate

    tmp, ckpt, data_cfg, cache, judge, info = text_run
    base = [f"ckpt={ckpt}", "n=6", "sampler=improved", f"cache_dir={cache}", f"out_dir={tmp / 'eval'}", "progress=false",
            *TINY_OVERRIDES]
    report = evaluate(compose_config("eval", *base, "nelbo_samples=4"))  # metrics=null: all that apply to text
    table = capsys.readouterr().out
    assert "training the fluency judge" not in table and "gen. perplexity" in table and "unigram entropy" in table
    assert {"form_accuracy", "nelbo_per_token"} < set(report) and "fid" not in report
    real = torch.load(ckpt, weights_only=True)  # the held-out texts: the first n of the data's test split
    from hydra.utils import instantiate

    data = instantiate(real["udm"]["data"])
    data.setup("test")
    assert report["fluency_real_texts"] == min(6, len(data.test)) == 4 and report["fluency_judge"] == info["id"]
    assert report["real_ppl"] == pytest.approx(generative_perplexity(judge, data.test[:4]))
    assert report["real_entropy"] == pytest.approx(float(unigram_entropy(data.test[:4]).mean()))
    written = [data.tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in open(report["samples_file"], encoding="utf-8").read().splitlines()]
    assert report["entropy"] == pytest.approx(float(unigram_entropy(written).mean()))  # of the texts written
    assert report["gen_ppl"] > report["real_ppl"]  # an untrained model's texts read worse than real ones
    image = fake_checkpoint(tmp / "digits.ckpt")
    with pytest.raises(UdmError, match="metrics asks for fluency, but fluency applies to text checkpoints; this one holds image"):
        evaluate(compose_config("eval", f"ckpt={image}", "n=4", "metrics=[fluency]", f"out_dir={tmp / 'eval'}"))


def test_udm_features_reports_the_cached_judge_of_text_data(text_run, capsys):
    from udm.jobs.features import features

    tmp, ckpt, data_cfg, cache, _, info = text_run
    data_args = [f"data.{k}={v}" for k, v in data_cfg.items() if k in ("path", "length", "test_fraction")]
    found = features(compose_config("features", "data=text_file", *data_args, f"cache_dir={cache}", *TINY_OVERRIDES))
    said = capsys.readouterr().out
    assert found["path"] == info["path"] and "training" not in said
    assert f"held-out perplexity is {info['test_perplexity']:.1f} on 4 texts" in said


def test_udm_generate_measures_fluency_when_asked(text_run, capsys):
    from udm.jobs.generate import generate_text

    tmp, ckpt, _, cache, judge, _ = text_run
    result = generate_text(compose_config("generate", f"ckpt={ckpt}", "n=3", "fluency=true", f"cache_dir={cache}",
                                          f"out_dir={tmp / 'gen'}", "progress=false", *TINY_OVERRIDES))
    m, tok = result["metrics"], tokenizer_from_state(torch.load(ckpt, weights_only=True)["udm"]["tokenizer"])
    ids = torch.tensor(encode(tok, result["texts"]))
    assert m["entropy"] == pytest.approx(float(unigram_entropy(ids).mean()))
    assert m["gen_ppl"] == pytest.approx(generative_perplexity(judge, ids))
    assert m["real_entropy"] > 0 and "perplexity" in capsys.readouterr().out
    plain = generate_text(compose_config("generate", f"ckpt={ckpt}", "n=3", f"out_dir={tmp / 'gen'}", "progress=false"))
    assert "gen_ppl" not in plain["metrics"]  # fluency=false (the default) leaves the judge alone


def test_variable_length_text_is_read_up_to_its_end_token():
    """Rows of variable-length text: the entropy counts the tokens before the first end token (padding and what
    follows the end left out), and the perplexity scores those tokens and the end token only."""
    from udm.metrics.fluency import generative_perplexity, unigram_entropy

    END, PAD = 3, 0
    rows = torch.tensor([[5, 6, 7, 8, END, PAD, PAD, PAD], [5, 5, END, 9, 9, 9, PAD, PAD]])
    assert torch.allclose(unigram_entropy(rows, END, PAD), torch.tensor([math.log(4), 0.0], dtype=torch.float64))

    class Judge(torch.nn.Module):  # NLL of token i is its position + 1: the mean over what is read is known
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def nll(self, x):
            return torch.arange(1.0, x.shape[1] + 1).expand(x.shape).clone()

    # read: positions 1..5 of row 0 (4 tokens and the end), 1..3 of row 1 -> mean (15 + 6) / 8
    assert abs(generative_perplexity(Judge(), rows, end=END) - math.exp(21 / 8)) < 1e-9
    assert abs(generative_perplexity(Judge(), rows) - math.exp(4.5)) < 1e-9  # fixed-length reading: every token
