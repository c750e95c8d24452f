"""Evaluation: the FID feature extractor (udm-features), FID/KID on its features, and udm-eval end to end."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from udm.cli import CONF_DIR
from udm.data import Digits
from udm.data.text import PUNCTUATION
from udm.errors import UdmError
from udm.jobs.features import cache_path, default_cache_dir, load_extractor
from udm.jobs.train import build_recipe, fill_from_data
from udm.metrics.fid import frechet_distance, kernel_distance
from udm.metrics.text import text_metrics

from .conftest import compose_train, run_cli, run_main, train_in_process
from .test_cli import SMOKE

DIGITS = {"_target_": "udm.data.Digits", "image_size": 8, "channels": 1, "batch_size": 64, "test_fraction": 0.1, "split_seed": 0}


# The test machine's two cores are shared: torch's OpenMP threads then mostly wait on each other
# (this module ran 5x slower with 2 threads than with 1 under load). Nothing here depends on it.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_config(name: str, *overrides: str):
    """A config as its console script sees it (${hydra:...} resolves, e.g. sampler_name)."""
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    """The digits extractor, trained once through the console script into a temporary cache."""
    cache = tmp_path_factory.mktemp("features")
    proc = run_cli("udm-features", "data=digits", f"cache_dir={cache}", "extractor.epochs=4", "progress=false", cwd=cache,
                   env=ONE_THREAD)
    return cache, proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A smoke run to evaluate, trained in this process (one thread: the module's autouse fixture); udm-eval runs as a subprocess."""
    tmp = tmp_path_factory.mktemp("eval")
    run = tmp / "run"
    train_in_process(*SMOKE, f"hydra.run.dir={run}", "final_samples=0")
    return tmp, run


def test_features_script_caches_a_safe_file_and_reports_accuracy(extractor):
    cache, proc = extractor
    path = cache_path(DIGITS, cache)
    assert path.is_file() and str(path) in proc.stdout
    assert "training the FID feature extractor" in proc.stdout and "held-out accuracy" in proc.stdout
    payload = torch.load(path, weights_only=True)
    assert payload["test_accuracy"] > 0.9 and payload["n_test"] == 180 and payload["settings"]["epochs"] == 4
    net, info = load_extractor(path)
    assert not net.training and info["id"].startswith(path.stem)
    # the key ignores settings that leave the images alone, and follows those that change them
    assert cache_path({**DIGITS, "batch_size": 7}, cache) == path != cache_path({**DIGITS, "split_seed": 1}, cache)


def test_a_cached_extractor_is_reused(extractor, capsys):
    from udm.jobs.features import features

    cache, _ = extractor
    before = cache_path(DIGITS, cache).stat().st_mtime_ns
    info = features(compose_config("features", "data=digits", f"cache_dir={cache}"))
    assert "training" not in capsys.readouterr().out and cache_path(DIGITS, cache).stat().st_mtime_ns == before
    assert info["test_accuracy"] > 0.9


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "udm" / "features"
    assert cache_path(DIGITS).parent == tmp_path / "udm" / "features"


def test_fid_of_real_images_is_near_zero_and_far_below_noise(extractor):
    cache, _ = extractor
    net, _ = load_extractor(cache_path(DIGITS, cache))
    data = Digits()
    data.setup()
    real, other_real = data.test, data.train[: len(data.test)]
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_real, fid_noise = frechet_distance(real, other_real, net), frechet_distance(real, noise, net)
    assert fid_real < 10 and fid_real < 0.05 * fid_noise, (fid_real, fid_noise)
    kid_real, _, size = kernel_distance(real, other_real, net, subsets=20, subset_size=50)
    kid_noise, _, _ = kernel_distance(real, noise, net, subsets=20, subset_size=50)
    assert size == 50 and abs(kid_real) < 0.1 * kid_noise
    assert kernel_distance(real[:30], noise[:40], net, subsets=5, subset_size=1000)[2] == 30  # capped at n


def test_eval_writes_json_with_metrics_cost_and_grid(trained, extractor):
    tmp, run = trained
    cache, _ = extractor
    proc = run_cli("udm-eval", f"ckpt={run}", "n=16", "sampler.steps=5", "bpd_samples=4", f"cache_dir={cache}",
                   "progress=false", cwd=tmp, env=ONE_THREAD)
    path = Path(proc.stdout.split("metrics written to ")[-1].strip())
    assert path == run / "eval" / "ddim-5steps-n16-seed0.json"
    report = json.loads(path.read_text())
    accuracy = torch.load(cache_path(DIGITS, cache), weights_only=True)["test_accuracy"]
    assert report["nfe_per_sample"] == 5 and report["steps"] == 5 and report["seconds_per_sample"] > 0
    assert report["fid"] > 0 and report["kid_std"] >= 0 and "kid_mean" in report
    assert report["fid_extractor_accuracy"] == accuracy and report["fid_real_images"] == 180
    assert report["bpd"] > 0 and report["bpd_images"] == 4 and report["bpd_levels"] == 17
    assert report["process"].startswith("Gaussian(") and report["data"] == "udm.data.Digits"
    assert report["sampler"] == "ddim" and report["sampler_eta"] == 0.0 and report["n"] == 16
    assert Path(report["samples_file"]).is_file() and report["samples_file"].endswith(".png")
    assert "FID" in proc.stdout and "NFE/sample" in proc.stdout
    # what udm-compare reads: the run's overrides as Hydra recorded them, and this evaluation's own
    assert report["run_overrides"] == OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml"))
    assert "experiment=digits_smoke" in report["run_overrides"] and "n=16" in report["eval_overrides"]


def fake_checkpoint(path: Path, *overrides: str, experiment: str = "digits_smoke") -> Path:
    """An untrained checkpoint with a real recipe: enough for the checks that run before sampling."""
    cfg = compose_train(f"experiment={experiment}", *overrides)
    data = instantiate(cfg.data)
    data.setup("fit")
    fill_from_data(cfg.process, data.derived, "process")
    fill_from_data(cfg.net, data.derived, "net")
    net = instantiate(cfg.net)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "udm": build_recipe(cfg, data)}, path)
    return path


def test_bits_per_dim_of_a_cold_process_is_refused_clearly(tmp_path):
    ckpt = fake_checkpoint(tmp_path / "blur.ckpt", "process=blur")
    proc = run_main("udm-eval", f"ckpt={ckpt}", "n=4", "metrics=[bpd]")  # a refusal: in this process, spared a start-up
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "metrics asks for bpd, but bits/dim applies to Gaussian processes" in proc.stderr and "Blur(" in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["n=181"], "held-out split of Digits has 180 images, fewer than n=181"),
        (["metrics=[fid,sharpness]"], "unknown metric(s) sharpness"),
        (["ckpt=/nonexistent/run"], "/nonexistent/run does not exist"),
    ],
)
def test_bad_requests_name_the_problem(tmp_path, args, message):
    from udm.jobs.evaluate import evaluate

    ckpt = fake_checkpoint(tmp_path / "gauss.ckpt")
    overrides = [f"ckpt={ckpt}", f"cache_dir={tmp_path}", *args] if not args[0].startswith("ckpt=") else args
    cfg = compose_config("eval", *overrides)
    with pytest.raises(UdmError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(cfg)


@pytest.mark.parametrize("experiment", ["quatrain_mask", "quatrain_uniform"])  # the [MASK] and the uniform-state bound
def test_a_text_checkpoint_gets_text_measures_and_the_token_nelbo(tmp_path, experiment):
    from udm.jobs.evaluate import evaluate

    ckpt = fake_checkpoint(tmp_path / "poems.ckpt", "net.hidden=32", "net.layers=1", "net.heads=2", experiment=experiment)
    # named, not metrics=null: fluency would train its judge on the poems for minutes (tests/test_fluency.py runs it)
    cfg = compose_config("eval", f"ckpt={ckpt}", "n=4", "sampler=improved", "nelbo_samples=8", f"out_dir={tmp_path}", "progress=false",
                         "metrics=[text,nelbo]")
    report = evaluate(cfg)
    assert report["modality"] == "text" and report["steps"] == 32 and report["nfe_per_sample"] == 32
    assert report["nelbo_per_token"] > 0 and report["nelbo_sem"] > 0
    assert report["nelbo_texts"] + report["nelbo_skipped"] == 8 and "fid" not in report and "bpd" not in report
    texts = Path(report["samples_file"]).read_text(encoding="utf-8").splitlines()
    assert len(texts) == 4
    # the text measures are those of the texts written, against the checkpoint's training texts
    data = instantiate(torch.load(ckpt, weights_only=True)["udm"]["data"])
    data.setup("fit")
    measured, keys = text_metrics(texts, data.train_texts), ("form_accuracy", "copy_rate", "distinct_chars")
    assert {k: report[k] for k in keys} == {k: measured[k] for k in keys}
    real = text_metrics(data.test_texts[:4], data.train_texts)  # the reference: as many held-out real texts
    assert {k: report[f"real_{k}"] for k in keys} == {k: real[k] for k in keys} and report["real_form_accuracy"] == 1.0
    # form, written out for seven-character quatrains: punctuation after every 7 characters and nowhere else
    form = [len(t) == 32 and [i for i, c in enumerate(t) if c in PUNCTUATION] == [7, 15, 23, 31] for t in texts]
    assert report["form_accuracy"] == sum(form) / 4
    with pytest.raises(UdmError, match="metrics asks for fid, but fid applies to image checkpoints"):
        evaluate(compose_config("eval", f"ckpt={ckpt}", "n=4", "metrics=[fid]", f"out_dir={tmp_path}"))


@pytest.mark.slow  # DDP sampling is also covered by test_cli's and test_reliability's two-process runs (the default suite stays under 10 minutes on 2 cores)
def test_sampling_shared_by_two_processes_gives_the_single_process_scores(trained, extractor):
    """devices=2 (DDP over gloo): each rank draws its share of the batches, rank 0 scores the gathered samples.
    Batches carry their own generators, so the samples, and with them FID/KID, equal one process's exactly."""
    tmp, run = trained
    cache, _ = extractor
    reports = []
    for devices in (1, 2):
        out = tmp / f"devices{devices}"
        proc = run_cli("udm-eval", f"ckpt={run}", "n=40", "batch_size=8", "sampler=ddpm", "sampler.steps=5", "metrics=[fid,kid]",
                       "device=cpu", f"devices={devices}", f"cache_dir={cache}", f"out_dir={out}", "progress=false", cwd=tmp,
                       env=ONE_THREAD)
        assert proc.stdout.count("metrics written to") == 1  # rank 0 alone reports
        reports.append(json.loads(next(out.glob("*.json")).read_text()))
    one, two = reports
    assert two["sampling_processes"] == 2 and one["sampling_processes"] == 1
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-9) and two["kid_mean"] == pytest.approx(one["kid_mean"], rel=1e-9)
    assert two["nfe_per_sample"] == one["nfe_per_sample"] == 5
    assert Path(one["samples_file"]).read_bytes() == Path(two["samples_file"]).read_bytes()


from udm.metrics import Metric, Row  # noqa: E402  (beside the one metric class this test module defines)


class MeanPixel(Metric):
    """A metric written the way a newcomer would: this class and one YAML file, nothing else."""

    columns = ("mean_pixel", "mean_pixel_scale")
    table = (Row("mean_pixel", "mean pixel", "{:.4f}", note="x {mean_pixel_scale}", compare_label="mean px"),)

    def __init__(self, scale: float = 1.0, needs: str = "image"):
        self.scale, self.needs = scale, needs

    def why_not(self, model, context):
        return None if model.modality == self.needs else f"mean pixel applies to {self.needs} checkpoints"

    def compute(self, model, samples, context):
        return {"mean_pixel": self.scale * float(samples.float().mean()), "mean_pixel_scale": self.scale}


def test_a_new_metric_is_one_class_and_one_yaml_file(tmp_path, capsys):
    """The class above and metric/mean_pixel.yaml in a config folder on Hydra's search path: udm-eval scores it
    (its settings overridable), lists it among the known metrics, writes its column and its table row, and
    udm-compare gives it a column."""
    from udm.jobs.compare import compare
    from udm.jobs.evaluate import evaluate

    conf = tmp_path / "conf"
    (conf / "metric").mkdir(parents=True)
    (conf / "metric" / "mean_pixel.yaml").write_text(f"_target_: {__name__}.MeanPixel\nscale: 1.0\nneeds: image\n")
    ckpt = fake_checkpoint(tmp_path / "gauss.ckpt")
    search = f"hydra.searchpath=[file://{conf}]"
    base = [f"ckpt={ckpt}", "n=4", "sampler.steps=2", f"out_dir={tmp_path / 'out'}", "progress=false", search]
    report = evaluate(compose_config("eval", *base, "metrics=[mean_pixel]", "+metric.mean_pixel.scale=2.5"))
    assert report["mean_pixel_scale"] == 2.5
    # the scored samples, as saved beside the JSON (8-bit PNG: the mean moves by at most half a level)
    import numpy as np
    from PIL import Image

    saved = np.asarray(Image.open(report["samples_file"]).convert("L"), dtype=np.float64)[::8, ::8]  # grids upscale 8x8 images 8x
    cells = [saved[2 + 10 * r: 10 + 10 * r, 2 + 10 * c: 10 + 10 * c] for r in range(2) for c in range(2)]
    assert report["mean_pixel"] == pytest.approx(2.5 * (np.mean(cells) / 127.5 - 1), abs=2.5 / 255)
    written = json.loads(Path(report["json"]).read_text())
    assert written["mean_pixel"] == report["mean_pixel"] and "fid" not in written and "nfe_per_sample" in written
    table = capsys.readouterr().out
    assert "mean pixel" in table and f"{report['mean_pixel']:.4f}" in table and "x 2.5" in table
    with pytest.raises(UdmError, match=r"unknown metric\(s\) nope; choose from fid, class_accuracy, class_diversity, kid, bpd, ode_bpd, text, fluency, author_accuracy, nelbo, mean_pixel"):
        evaluate(compose_config("eval", *base, "metrics=[nope]"))
    with pytest.raises(UdmError, match="metrics asks for mean_pixel, but mean pixel applies to text checkpoints"):
        evaluate(compose_config("eval", *base, "metrics=[mean_pixel]", "+metric.mean_pixel.needs=text"))
    out = compare(compose_config("compare", f"dir='{tmp_path / 'out'}'", search))
    assert "mean px" in out["header"] and out["rows"][0][out["header"].index("mean px")] == f"{report['mean_pixel']:.4f}"


# covered by default: test_text_conditions::test_eval_scores_author_accuracy_against_the_classifier_and_real_texts (udm-eval labels=all guidance=2); test_guidance's console and class-accuracy tests
@pytest.mark.slow
def test_a_class_conditional_checkpoint_gets_class_accuracy_under_guidance(tmp_path, extractor):
    cache, _ = extractor
    run = tmp_path / "run"
    run_cli("udm-train", *SMOKE, "data.condition=label", "net.num_classes=???", f"hydra.run.dir={run}", "final_samples=0",
            cwd=tmp_path, env=ONE_THREAD)
    proc = run_cli("udm-eval", f"ckpt={run}", "n=20", "sampler.steps=4", "labels=all", "guidance=2", f"cache_dir={cache}",
                   "metrics=[class_accuracy,fid,class_diversity]", "progress=false", cwd=tmp_path, env=ONE_THREAD)
    report = json.loads(next((run / "eval").glob("*labels-all-w2.json")).read_text())
    per_class = report["class_accuracy_per_class"]
    diversity = report["class_diversity_per_class"]
    assert len(diversity) == 10 and report["class_diversity"] == pytest.approx(sum(diversity.values()) / 10)
    assert report["guidance"] == 2 and report["labels"] == "all" and len(per_class) == 10  # two samples of each class
    assert report["class_accuracy"] == pytest.approx(sum(per_class.values()) / 10) and "fid" in report
    assert "class accuracy" in proc.stdout
    unconditional = run_cli("udm-eval", f"ckpt={run}", "n=20", "metrics=[class_accuracy]", f"cache_dir={cache}",
                            cwd=tmp_path, check=False, env=ONE_THREAD)
    assert unconditional.returncode == 2 and "evaluate a class-conditional checkpoint with labels=all" in unconditional.stderr
