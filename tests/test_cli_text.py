"""Text end to end through the console scripts: train a tiny poem model with each token process,
generate at several tokens per step, infill a template, and refuse bad requests clearly."""

import json

import pytest
import torch
from hydra.utils import instantiate

from udm.data.text import PUNCTUATION
from udm.metrics.text import text_metrics

from .conftest import run_cli, run_main

TINY = ["net.hidden=32", "net.layers=1", "net.heads=2", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1", "val_samples=2", "final_samples=2"]
TEMPLATE = "朝辭白帝彩雲間，＿＿＿＿＿＿＿。兩岸猿聲啼不住，輕舟已過萬重山。"


def tiny_run(tmp_path_factory, experiment, in_process=False):
    tmp = tmp_path_factory.mktemp(experiment)
    run = tmp / "run"
    if in_process:  # spares a start-up; udm-generate still runs on the run as a subprocess
        proc = run_main("udm-train", f"experiment={experiment}", *TINY, f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    else:
        proc = run_cli("udm-train", f"experiment={experiment}", *TINY, f"hydra.run.dir={run}", cwd=tmp)
    return tmp, run, proc


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "quatrain_mask")


@pytest.fixture(scope="module")
def replace_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "quatrain_replace", in_process=True)  # mask_run is the udm-train subprocess


@pytest.fixture(scope="module")
def uniform_run(tmp_path_factory):
    return tiny_run(tmp_path_factory, "quatrain_uniform")


@pytest.fixture(params=["mask_run", "replace_run", pytest.param("uniform_run", marks=pytest.mark.slow)])  # uniform: test_uniform.py
def poem_run(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def training_texts():
    """run -> the training texts its checkpoint's data recipe gives (loaded once per recipe: both runs share one)."""
    loaded = {}

    def load(run):
        recipe = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["udm"]["data"]
        key = json.dumps(recipe, sort_keys=True)
        if key not in loaded:
            data = instantiate(recipe)
            data.setup("fit")
            loaded[key] = data.train_texts
        return loaded[key]

    return load


def quatrain_form(text: str) -> bool:
    """A seven-character quatrain's form, written out: 32 characters, punctuation after every 7 and nowhere else."""
    return len(text) == 32 and [i for i, c in enumerate(text) if c in PUNCTUATION] == [7, 15, 23, 31]


def test_training_writes_text_samples_and_a_checkpoint_with_the_tokenizer(poem_run):
    tmp, run, proc = poem_run
    assert (run / "checkpoints" / "last.ckpt").is_file()
    lines = (run / "samples.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all(len(line) == 32 for line in lines)  # one character per token
    assert (run / "samples" / "step000003.txt").is_file()


@pytest.mark.parametrize("poem_run, tps", [
    ("mask_run", 1),
    # covered by default: [replace_run-4] (several tokens per step) and test_infilling_keeps_the_template_characters[mask_run]
    pytest.param("mask_run", 4, marks=pytest.mark.slow),
    # covered by default: [mask_run-1] (one token per step, the same seed again) and [replace_run-4] (the replace process)
    pytest.param("replace_run", 1, marks=pytest.mark.slow),
    ("replace_run", 4),
    *(pytest.param("uniform_run", tps, marks=pytest.mark.slow) for tps in (1, 4)),  # uniform: test_uniform.py
], indirect=["poem_run"])
def test_generate_prints_writes_and_measures(poem_run, tps, training_texts):
    tmp, run, _ = poem_run
    proc = run_cli("udm-generate", f"ckpt={run}", "n=6", f"tokens_per_step={tps}", cwd=tmp)
    txt = next(line.split(" to ")[-1] for line in proc.stdout.splitlines() if "texts written to" in line)
    texts = open(txt, encoding="utf-8").read().splitlines()
    assert len(texts) == 6 and all(len(t) == 32 and "[MASK]" not in t for t in texts)
    report = json.loads(open(txt[:-4] + ".json", encoding="utf-8").read())
    assert report["steps"] == 32 // tps
    # the measures are those of the texts written, against the run's training texts
    train = training_texts(run)
    assert all(quatrain_form(t) for t in train)  # the layout below is the training texts' form
    measured = text_metrics(texts, train)
    assert {k: report["metrics"][k] for k in measured} == measured and report["metrics"]["n"] == 6
    assert report["metrics"]["real_form_accuracy"] == 1.0  # the reference: held-out real quatrains all have the form
    assert report["metrics"]["form_accuracy"] == sum(map(quatrain_form, texts)) / 6
    if tps > 1:
        return
    again = run_main("udm-generate", f"ckpt={run}", "n=6", f"tokens_per_step={tps}")  # in this process: the same seed
    txt2 = next(line.split(" to ")[-1] for line in again.stdout.splitlines() if "texts written to" in line)
    assert txt2 != txt and open(txt2, encoding="utf-8").read().splitlines() == texts  # same seed, new file


@pytest.mark.parametrize("poem_run", [
    "mask_run",
    # covered by default: [mask_run] (infilling through udm-generate); the random order in test_discrete's oracle tests
    pytest.param("replace_run", marks=pytest.mark.slow),
    pytest.param("uniform_run", marks=pytest.mark.slow),  # uniform: test_uniform.py
], indirect=True)
def test_infilling_keeps_the_template_characters(poem_run, training_texts):
    tmp, run, _ = poem_run
    order = "confidence" if "mask" in str(run) else "random"
    proc = run_cli("udm-generate", f"ckpt={run}", "n=4", f"template='{TEMPLATE}'", f"order={order}", "tokens_per_step=2", cwd=tmp)
    txt = next(line.split(" to ")[-1] for line in proc.stdout.splitlines() if "texts written to" in line)
    texts = open(txt, encoding="utf-8").read().splitlines()
    for text in texts:
        assert len(text) == 32
        assert all(c == t for c, t in zip(text, TEMPLATE) if t != "＿"), text
        assert "[MASK]" not in text
    # the template holds the four marks, so the form fails only where a blank was filled with punctuation
    report = json.loads(open(txt[:-4] + ".json", encoding="utf-8").read())
    measured = text_metrics(texts, training_texts(run))
    assert {k: report["metrics"][k] for k in measured} == measured
    assert report["metrics"]["form_accuracy"] == sum(map(quatrain_form, texts)) / 4
    assert report["metrics"]["form_accuracy"] == sum(not PUNCTUATION.intersection(t[8:15]) for t in texts) / 4


# covered by default: test_remasking (the loop, blocks, margin order and output cache in process) and [mask_run-1] (udm-generate)
@pytest.mark.slow
def test_generate_with_remasking_loop_and_blocks(mask_run):
    """ReMDM with its loop, line-by-line blocks and the margin order through udm-generate: quatrain-length texts, and
    every step of the grid (32 + 4 loop steps) either called the time-free net or reused its output."""
    tmp, run, _ = mask_run
    proc = run_cli("udm-generate", f"ckpt={run}", "n=3", "sampler=remdm", "sampler.eta=0.3", "sampler.loop_steps=4",
                   "block_size=8", "order=margin", cwd=tmp)
    txt = next(line.split(" to ")[-1] for line in proc.stdout.splitlines() if "texts written to" in line)
    texts = open(txt, encoding="utf-8").read().splitlines()
    assert len(texts) == 3 and all(len(t) == 32 and "[MASK]" not in t for t in texts)
    calls = json.loads(open(txt[:-4] + ".json", encoding="utf-8").read())["network_calls"]
    assert calls["made"] + calls["reused"] == 36 and calls["made"] >= 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["tokens_per_step=0"], "tokens_per_step=0: tokens_per_step is the tokens restored per step"),
        (["tokens_per_step=33"], "tokens_per_step must lie in 1..32"),
        (["template='朝辭白帝＿＿。'"], "template is 7 tokens long"),
        (["template='朝辭白帝彩雲間，＿＿＿＿＿＿＿。兩岸猿聲啼不住，輕舟已過萬重😀。'"], "does not know: 😀"),
    ],
)
def test_bad_generate_requests(mask_run, args, message):
    tmp, run, _ = mask_run
    proc = run_main("udm-generate", f"ckpt={run}", *args)  # in this process: a refusal needs no 8 s start-up
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_image_and_text_checkpoints_point_to_the_right_script(mask_run):
    tmp, run, _ = mask_run
    proc = run_cli("udm-sample", f"ckpt={run}", cwd=tmp, check=False)
    assert proc.returncode != 0 and "use udm-generate" in proc.stderr.replace("generate text with ", "use ")


def test_training_on_an_empty_text_file_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    proc = run_main("udm-train", "experiment=quatrain_mask", "data=text_file", f"data.path={empty}", *TINY,
                    f"hydra.run.dir={tmp_path / 'run'}")  # in this process: a refusal needs no 8 s start-up
    assert proc.returncode != 0 and "holds no text" in proc.stderr and "Traceback" not in proc.stderr


# covered by default: test_text_lengths::test_a_subword_tokenizer_trains_and_generates_variable_text_end_to_end (data=text_file), [mask_run] tests
@pytest.mark.slow
def test_a_user_text_file_of_five_character_quatrains_trains_and_generates(tmp_path):
    poems = ["白日依山盡，黃河入海流。欲窮千里目，更上一層樓。", "床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
             "千山鳥飛絕，萬徑人蹤滅。孤舟蓑笠翁，獨釣寒江雪。", "紅豆生南國，春來發幾枝。願君多采擷，此物最相思。"] * 8
    path = tmp_path / "five.txt"
    path.write_text("\n".join(poems), encoding="utf-8")
    run = tmp_path / "run"
    run_cli("udm-train", "experiment=quatrain_mask", "data=text_file", f"data.path={path}", "data.length=24",
            "data.test_fraction=0.2", *TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    proc = run_cli("udm-generate", f"ckpt={run}", "n=3", "tokens_per_step=3", cwd=tmp_path)
    assert "form accuracy" in proc.stdout
    txt = next(line.split(" to ")[-1] for line in proc.stdout.splitlines() if "texts written to" in line)
    assert all(len(t) == 24 for t in open(txt, encoding="utf-8").read().splitlines())
