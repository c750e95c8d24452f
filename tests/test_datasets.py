"""Real datasets from local files: CIFAR-10's python batches, image folders of any size, random flips, and the
CIFAR-10 DDPM recipe (its smoke variant end to end, the full one's parameter count)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tests.cifar_files import NAMES, write_cifar
from tests.conftest import compose_train, run_cli, train_in_process
from udm.data import CIFAR10, ImageFolder
from udm.errors import UdmError
from udm.jobs.train import fill_from_data

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"))


def test_cifar10_reads_the_batches_pixel_for_pixel_with_the_official_split_and_names(cifar):
    folder, pixels, labels = cifar
    data = CIFAR10(str(folder), condition="label")
    data.setup("fit")
    expected = torch.from_numpy(pixels).float() / 255 * 2 - 1
    assert torch.equal(data.train, expected[:80]) and torch.equal(data.test, expected[80:])  # data batches / test batch
    assert torch.equal(data.train_cond, torch.from_numpy(labels[:80])) and torch.equal(data.test_cond, torch.from_numpy(labels[80:]))
    assert data.class_names == NAMES and data.shape == (3, 32, 32)
    assert data.recipe()["condition"] == {"kind": "label", "classes": 10, "names": NAMES}


def test_cifar10_refuses_a_missing_batch_a_foreign_pickle_and_another_layout(tmp_path, cifar):
    folder, _, _ = cifar
    with pytest.raises(UdmError, match="is not a folder"):
        CIFAR10(str(tmp_path / "nowhere")).setup()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        if f.name != "data_batch_3":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UdmError, match="has no data_batch_3"):
        CIFAR10(str(broken)).setup()

    class Payload:  # a pickle that would call os.system when loaded by a plain unpickler
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (broken / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(UdmError, match=r"data_batch_3 is not a CIFAR-10 python batch \(a CIFAR-10 batch holds no (posix|os)\.system"):
        CIFAR10(str(broken)).setup()
    (broken / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((4, 32, 32, 3), np.uint8), b"labels": [0] * 4}))
    with pytest.raises(UdmError, match=r"'data' must be uint8 pixels \[N, 3072\]"):
        CIFAR10(str(broken)).setup()
    with pytest.raises(UdmError, match="data.channels must be 3"):
        CIFAR10(str(folder), channels=1)


class Training:
    training = True


def test_flips_mirror_about_half_of_the_training_images_and_no_held_out_one(cifar):
    folder, _, _ = cifar
    data = CIFAR10(str(folder), flip=True, condition="label")
    data.setup("fit")
    x0, labels = data.train[:80], data.train_cond[:80]
    data.trainer = Training()
    torch.manual_seed(0)
    out, out_labels = data.on_after_batch_transfer((x0, labels), 0)
    mirrored = (out == x0.flip(-1)).flatten(1).all(1)
    kept = (out == x0).flatten(1).all(1)
    assert bool((mirrored | kept).all()) and 25 <= int(mirrored.sum()) <= 55  # each image whole, one way or the other
    assert out_labels is labels
    data.trainer.training = False  # validation batches are never flipped
    assert data.on_after_batch_transfer(x0, 0) is x0
    assert CIFAR10(str(folder), flip=False).on_after_batch_transfer(x0, 0) is x0


def test_an_image_folder_of_any_size_is_resized_on_its_shorter_side_and_centre_cropped(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)  # 80 wide, 40 high: left quarter red, middle half green, right quarter blue
    wide[:, :20, 0] = wide[:, 20:60, 1] = wide[:, 60:, 2] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.full((64, 64, 4), 200, np.uint8), mode="RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((10, 30), 0, np.uint8), mode="L").save(tmp_path / "small_gray.png")
    data = ImageFolder(str(tmp_path), image_size=20, channels=3)
    images = data.load()
    assert images.shape == (3, 3, 20, 20)
    alpha, gray, crop = images  # sorted file names
    assert torch.allclose(alpha, torch.full_like(alpha, 200 / 255 * 2 - 1))  # RGBA: the alpha channel is dropped
    assert torch.equal(gray, torch.full_like(gray, -1.0))  # grayscale upsampled to RGB
    # 80x40 -> 40x20, the centre 20x20 is the green middle band: pure green away from the resampling edges
    assert torch.allclose(crop[:, :, 2:-2], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 20, 16), atol=1e-6)
    with pytest.raises(UdmError, match="alpha.png is 64x64, expected 20x20"):
        ImageFolder(str(tmp_path), image_size=20, resize=False).load()
    squashed = ImageFolder(str(tmp_path), image_size=20, crop="squash").load()[2]  # 80x40 -> 20x20: all three bands
    assert squashed[0, 10, 1] > 0.9 and squashed[1, 10, 10] > 0.9 and squashed[2, 10, 18] > 0.9
    with pytest.raises(UdmError, match="data.crop='fill'"):
        ImageFolder(str(tmp_path), crop="fill")


def test_the_cifar10_ddpm_recipe_is_the_papers_35_7m_parameter_unet():
    cfg = compose_train("experiment=cifar10_ddpm", "data.path=unused")
    fill_from_data(cfg.net, {}, "net")
    net = instantiate(cfg.net)
    assert abs(sum(p.numel() for p in net.parameters()) / 35.7e6 - 1) < 0.01
    assert (cfg.net.channels, list(cfg.net.channel_mult), cfg.net.num_res_blocks) == (128, [1, 2, 2, 2], 2)
    assert list(cfg.net.attention_resolutions) == [16] and cfg.net.dropout == 0.1
    assert (cfg.process.T, cfg.process.schedule, cfg.process.parametrization) == (1000, "linear", "eps")
    assert cfg.callbacks.ema.decay == 0.9999 and cfg.data.batch_size == 128 and cfg.data.flip
    assert cfg.trainer.max_steps == 800_000 and cfg.optimizer.lr == 2e-4
    warmup = instantiate(cfg.scheduler)(torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr))
    lrs = []
    for _ in range(5001):
        lrs.append(warmup.get_last_lr()[0])
        warmup.step()
    assert lrs[0] == pytest.approx(2e-4 * 2e-4) and lrs[2500] == pytest.approx(1e-4, rel=1e-3) and lrs[5000] == pytest.approx(2e-4)


def test_cifar10_ddpm_smoke_trains_samples_and_evaluates_through_the_console_scripts(tmp_path, cifar):
    folder, _, _ = cifar
    run = tmp_path / "run"
    train_in_process("experiment=cifar10_ddpm_smoke", f"data.path={folder}", f"hydra.run.dir={run}")
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples.png").is_file()
    proc = run_cli("udm-eval", f"ckpt={run}", "n=8", "metrics=[fid]", "sampler.steps=4", "extractor.epochs=1",
                   f"cache_dir={tmp_path / 'cache'}", "progress=false", cwd=tmp_path, env=ONE_THREAD)
    report = json.loads(Path(proc.stdout.split("metrics written to ")[-1].strip()).read_text())
    assert report["data"] == "udm.data.CIFAR10" and report["fid_real_images"] == 16 and report["fid"] > 0


def test_the_flow_matching_counterpart_shares_the_ddpm_recipe_but_the_process(tmp_path, cifar):
    ddpm, flow = (compose_train(f"experiment={e}", "data.path=unused") for e in ("cifar10_ddpm", "cifar10_flow"))
    assert flow.net == ddpm.net and flow.data == ddpm.data and flow.optimizer == ddpm.optimizer
    assert flow.scheduler == ddpm.scheduler and flow.callbacks.ema == ddpm.callbacks.ema
    assert flow.process.schedule._target_.endswith("Flow") and flow.process.parametrization == "velocity"
    assert flow.process.time_density == "uniform" and not flow.process.clip_denoised and flow.trainer.max_steps == 400_000
    folder, _, _ = cifar
    run = tmp_path / "flow"
    train_in_process("experiment=cifar10_flow_smoke", f"data.path={folder}", f"hydra.run.dir={run}")
    recipe = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["udm"]
    assert recipe["process"]["parametrization"] == "velocity" and recipe["shape"] == [3, 32, 32]


def test_a_real_fit_routes_training_batches_through_the_flips(cifar):
    import lightning as L

    folder, _, _ = cifar

    class Spy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w, self.seen = torch.nn.Parameter(torch.zeros(())), []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[0].clone())
            return self.w * batch[0].mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data, spy = CIFAR10(str(folder), batch_size=16, flip=True, condition="label"), Spy()
    torch.manual_seed(0)
    L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(spy, datamodule=data)
    train = data.train.flatten(1)
    flips = 0
    for image in torch.cat(spy.seen):
        as_is, mirrored = (train == image.flatten()).all(1).any(), (train == image.flip(-1).flatten()).all(1).any()
        assert as_is or mirrored  # a training image, whole, one way or the other
        flips += int(mirrored and not as_is)
    assert 4 <= flips <= 28  # 32 images, each mirrored with probability 1/2
