"""End to end through the console scripts, as a user runs them: train, sample, resume, reproduce, DDP."""

import csv
from pathlib import Path

import pytest
import torch

from .conftest import run_cli

SMOKE = ["experiment=digits_smoke"]


def train(tmp_path: Path, name: str, *overrides: str, check: bool = True):
    run = tmp_path / name
    proc = run_cli("udm-train", *SMOKE, f"hydra.run.dir={run}", *overrides, cwd=tmp_path, check=check)
    return run, proc


def losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    run, proc = train(tmp, "run", "trainer.log_every_n_steps=1")
    return tmp, run, proc


def test_train_writes_checkpoint_grid_and_logs(trained):
    _, run, proc = trained
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "samples.png").is_file() and (run / "samples" / "step000020.png").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(losses(run)) == 20
    assert str(run / "samples.png") in proc.stdout
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20 and ckpt["udm"]["shape"] == [1, 8, 8]
    assert "current_model_state" in ckpt  # EMAWeightAveraging kept both weight sets


def test_sample_writes_grid_and_tensor_and_is_reproducible(trained):
    tmp, run, _ = trained
    outs = []
    for _ in range(2):
        proc = run_cli("udm-sample", f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "n=12", "sampler=ddim", "sampler.steps=5", cwd=tmp)
        tensor = Path(proc.stdout.split("written to ")[-1].strip())
        assert tensor.suffix == ".pt" and tensor.is_file()
        outs.append(torch.load(tensor, weights_only=True))
    assert outs[0].shape == (12, 1, 8, 8) and outs[0].abs().max() <= 1
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # the second run did not overwrite the first
    assert len(list((run / "samples").glob("ddim-5steps-n12-seed0*.png"))) == 2


def test_ddpm_sampler_from_a_run_folder(trained):
    tmp, run, _ = trained
    proc = run_cli("udm-sample", f"ckpt={run}", "n=4", "sampler=ddpm", "out_dir=" + str(tmp / "ddpm"), cwd=tmp)
    assert "1000 steps" in proc.stdout and list((tmp / "ddpm").glob("ddpm-1000steps-n4-seed0.png"))


def test_training_is_reproducible_from_the_seed(trained, tmp_path):
    _, run, _ = trained
    again, _ = train(tmp_path, "again", "trainer.log_every_n_steps=1")
    assert losses(again) == losses(run)
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    _, run, _ = trained
    resumed, proc = train(tmp_path, "resumed", f"resume={run}", "trainer.max_steps=30")
    assert "resuming from" in proc.stdout
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


def test_two_process_ddp_on_cpu(tmp_path):
    run, _ = train(tmp_path, "ddp", "trainer=ddp_cpu", "trainer.max_steps=4", "trainer.val_check_interval=4")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and (run / "samples.png").is_file()
