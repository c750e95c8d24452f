"""fid_inception: udm's FID Inception-v3 against torch-fidelity's on the same (random) weights, the TF1 resize in
closed form, the weights file's messages, and udm-eval end to end (no real weights are needed: random ones in a
file of the standard layout)."""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from udm.errors import UdmError
from udm.metrics.inception import (WEIGHTS_NAMES, WEIGHTS_URL, FIDInceptionV3, find_weights, load_inception,
                                   resize_like_tf1, to_uint8)

from .test_eval import compose_config, fake_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # the test machine's two cores are shared; Inception at 299 x 299 is the cost here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_weights(path: Path) -> Path:
    """A state dict of the standard file's layout with random values that keep a signal through the 94 layers
    (He-scaled convolutions, batch norms near the identity), saved at path."""
    g = torch.Generator().manual_seed(0)
    state = FIDInceptionV3().state_dict()
    for key, value in state.items():
        if key.endswith("conv.weight"):
            value.copy_(torch.randn(value.shape, generator=g) * (2 / value[0].numel()) ** 0.5)
        elif key.endswith(("running_var", "bn.weight")):
            value.copy_(1 + 0.1 * torch.rand(value.shape, generator=g))
        elif key.endswith(("running_mean", "bn.bias")) or key.startswith("fc."):
            value.copy_(0.1 * torch.randn(value.shape, generator=g))
    torch.save(state, path)
    return path


def peer_folder() -> Path | None:
    """torch-fidelity's package folder: installed, or a copy off sys.path in <venv>/peers (installed there with
    pip --target, so that torchmetrics does not find it and import its package __init__)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    copy = Path(sys.prefix) / "peers" / "torch_fidelity"
    return copy if copy.is_dir() else None


@contextlib.contextmanager
def torch_fidelity():
    """torch-fidelity's Inception and resize modules, imported without its package __init__ (which imports
    torchvision, not installable here): a bare package object stands in for it, and sys.modules is restored after."""
    folder = peer_folder()
    if folder is None:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps --target <venv>/peers torch-fidelity==0.4.0)")
    ours = [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]
    saved = {k: sys.modules.pop(k) for k in ours}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [str(folder)]
    sys.modules["torch_fidelity"] = package
    try:
        yield types.SimpleNamespace(inception=importlib.import_module("torch_fidelity.feature_extractor_inceptionv3"),
                                    resize=importlib.import_module("torch_fidelity.interpolate_compat_tensorflow"))
    finally:
        for k in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_features_equal_torch_fidelitys_on_the_same_weights_file(tmp_path):
    """The same file loads strictly into both (so the parameter names match), and the 2048 pool3 features of the
    same uint8 images agree to float tolerance (bit for bit on the CPU)."""
    weights = random_weights(tmp_path / "random.pth")
    images = torch.randint(0, 256, (2, 3, 37, 23), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    ours = load_inception(weights)(images)
    with torch_fidelity() as peer:
        extractor = peer.inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                               feature_extractor_weights_path=str(weights))
        theirs = extractor(images)[0]
    assert ours.shape == (2, 2048) and ours.dtype == torch.float32
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # the random net still tells the images apart
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_resize_is_tensorflow_1s_bilinear():
    """2x2 -> 4x4 by hand: output i reads input i * 2/4, the last pixel repeats past the edge; and every size
    equals torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x."""
    a, b, c, d = 0.0, 4.0, 8.0, 16.0
    top, bottom = [a, (a + b) / 2, b, b], [c, (c + d) / 2, d, d]
    middle = [(t + u) / 2 for t, u in zip(top, bottom)]
    expected = torch.tensor([top, middle, bottom, bottom])
    assert torch.equal(resize_like_tf1(torch.tensor([[[[a, b], [c, d]]]]), size=4)[0, 0], expected)
    g = torch.Generator().manual_seed(0)
    with torch_fidelity() as peer:
        for shape in [(2, 3, 8, 8), (1, 3, 32, 32), (1, 1, 300, 301), (1, 3, 5, 299)]:
            x = torch.rand(shape, generator=g) * 255
            theirs = peer.resize.interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
            assert torch.equal(resize_like_tf1(x), theirs), shape


def test_images_become_the_uint8_a_png_holds():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 1.0, 2.0]).view(1, 1, 1, 6)
    pixels = to_uint8(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 1, 6)  # grayscale repeated to RGB
    assert pixels[0, :, 0].tolist() == [[0, 0, 64, 128, 255, 255]] * 3
    with pytest.raises(UdmError, match=r"float images \[N, 1 or 3, H, W\]"):
        to_uint8(torch.zeros(1, 2, 4, 4))


def test_missing_weights_are_one_message_naming_the_file_the_url_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    with pytest.raises(UdmError) as missing:
        find_weights()
    message = str(missing.value)
    assert str(folder / WEIGHTS_NAMES[0]) in message and WEIGHTS_URL in message
    assert "inception_weights=PATH" in message and "nothing is downloaded" in message
    with pytest.raises(UdmError, match="inception_weights='/no/such.pth': there is no such file") as given:
        find_weights("/no/such.pth")
    assert WEIGHTS_URL in str(given.value)
    folder.mkdir(parents=True)
    (folder / WEIGHTS_NAMES[1]).write_bytes(b"")  # pytorch-fid's copy in the hub cache is found too
    assert find_weights() == folder / WEIGHTS_NAMES[1]


def test_a_foreign_or_broken_weights_file_is_refused_by_name(tmp_path):
    foreign = tmp_path / "linear.pth"
    torch.save(nn.Linear(3, 4).state_dict(), foreign)
    with pytest.raises(UdmError, match=r"linear.pth is not the FID Inception-v3's weights: \d+ of the network's \d+ tensors "
                                       r"are missing .*; 2 of the file's 2 tensors are not the network's \(e.g. weight\)"):
        load_inception(foreign)
    misshapen = tmp_path / "misshapen.pth"
    torch.save({**FIDInceptionV3().state_dict(), "fc.bias": torch.zeros(1000)}, misshapen)
    with pytest.raises(UdmError, match=r"1 have other shapes \(e.g. fc.bias\); it should be .*" + WEIGHTS_NAMES[0]):
        load_inception(misshapen)
    text = tmp_path / "weights.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UdmError, match=f"cannot read {text} as a PyTorch state dict .*{WEIGHTS_URL}"):
        load_inception(text)


def test_udm_eval_without_weights_stops_before_sampling(tmp_path, monkeypatch):
    from udm.jobs.evaluate import evaluate
    from udm.jobs.settings import EVALUATE, check_settings

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    ckpt = fake_checkpoint(tmp_path / "gauss.ckpt")
    base = [f"ckpt={ckpt}", "n=2", "sampler.steps=2", "metrics=[fid_inception]", f"out_dir={tmp_path / 'out'}", "progress=false"]
    with pytest.raises(UdmError, match=f"fid_inception needs the FID Inception-v3 weights file.*{WEIGHTS_URL}"):
        evaluate(compose_config("eval", *base))
    assert not list((tmp_path / "out").glob("*.json"))
    with pytest.raises(UdmError, match=r"metric.fid_inception.train_images=1: .* a whole number >= 2"):
        check_settings(compose_config("eval", *base, "+metric.fid_inception.train_images=1"), EVALUATE)


def test_udm_eval_scores_fid_inception_against_cached_training_statistics(tmp_path, capsys):
    """udm-eval metrics=[fid_inception] on an image checkpoint: the JSON holds the FID, the training images and the
    weights' id, the statistics are cached; the training images scored by the same metric against them give 0."""
    from udm.jobs.evaluate import evaluate
    from udm.metrics import Context, load_metrics
    from udm.models import open_model

    weights = random_weights(tmp_path / "random.pth")
    ckpt = fake_checkpoint(tmp_path / "gauss.ckpt")
    cfg = compose_config("eval", f"ckpt={ckpt}", "n=2", "sampler.steps=2", "metrics=[fid_inception]", "progress=false",
                         f"cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'out'}",
                         f"inception_weights={weights}", "+metric.fid_inception.train_images=3")
    report = evaluate(cfg)
    written = json.loads(Path(report["json"]).read_text())
    assert written["fid_inception"] > 0 and written["fid_inception_train_images"] == 3
    assert written["fid_inception_weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:8]
    out = capsys.readouterr().out
    assert "FID (Inception)" in out and "Inception statistics of 3 training images" in out
    assert len(list((tmp_path / "cache" / "inception").glob("digits-*-train3-*.pt"))) == 1

    model = open_model(ckpt)
    context = Context(cfg, model.data("test"))
    metric = load_metrics(cfg, ["fid_inception"])[0]
    train = model.data("fit").train[:3]
    assert abs(metric.compute(model, train, context)["fid_inception"]) < 1e-4 * written["fid_inception"]
    assert "Inception statistics" not in capsys.readouterr().out  # read from the cache
    everything = Context(compose_config("eval", f"ckpt={ckpt}", "metrics=null"), model.data("test"))
    assert "only when named" in metric.why_not(model, everything)


def test_udm_compare_notes_the_weights_and_the_reference():
    from udm.metrics.inception_fid import FIDInception

    same = [{"fid_inception_weights": "6726825d", "fid_inception_train_images": 50000}] * 2
    assert FIDInception.compare_note(same) == ("FID (Inception) is on the FID Inception-v3's pool3 features, weights "
                                               "`6726825d` against 50000 training images.")
    mixed = same + [{"fid_inception_weights": "6726825d", "fid_inception_train_images": 5000}]
    assert "These differ" in FIDInception.compare_note(mixed) and FIDInception.compare_note([{"fid": 1.0}]) is None
