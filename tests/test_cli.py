"""End to end through the console scripts, as a user runs them: train, sample, resume, reproduce, DDP."""

import csv
from pathlib import Path

import pytest
import torch

from .conftest import run_cli, run_main, train_in_process

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
    assert outs[0].shape == (12, 1, 8, 8)
    assert all(not torch.equal(outs[0][i], outs[0][j]) for i in range(12) for j in range(i))  # one sample per x_T
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    proc = run_cli("udm-sample", f"ckpt={run}", "n=12", "sampler=ddim", "sampler.steps=5", "seed=1", cwd=tmp)
    other = torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True)  # another seed: other samples
    assert all(not torch.equal(a, b) for a, b in zip(outs[0], other))
    # the second run did not overwrite the first
    assert len(list((run / "samples").glob("ddim-5steps-n12-seed0*.png"))) == 2


# covered by default: test_sample_writes_grid_and_tensor_and_is_reproducible (udm-sample ckpt=RUN_FOLDER); DDPM in test_sampling
@pytest.mark.slow
def test_ddpm_sampler_from_a_run_folder(trained):
    tmp, run, _ = trained
    proc = run_cli("udm-sample", f"ckpt={run}", "n=4", "sampler=ddpm", "out_dir=" + str(tmp / "ddpm"), cwd=tmp)
    assert "1000 steps" in proc.stdout and list((tmp / "ddpm").glob("ddpm-1000steps-n4-seed0.png"))


# covered by default: test_reliability::test_training_is_bit_identical_with_or_without_loader_workers (two runs, one seed)
@pytest.mark.slow
def test_training_is_reproducible_from_the_seed(trained, tmp_path):
    _, run, _ = trained
    again, _ = train(tmp_path, "again", "trainer.log_every_n_steps=1")
    assert losses(again) == losses(run)
    a = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# covered by default: test_reliability::test_a_killed_run_resumes_to_the_uninterrupted_weights (resume=, "resuming from")
@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(trained, tmp_path):
    _, run, _ = trained
    resumed, proc = train(tmp_path, "resumed", f"resume={run}", "trainer.max_steps=30")
    assert "resuming from" in proc.stdout
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


@pytest.mark.slow  # the default suite runs trainer=ddp_cpu through udm-train in test_reliability (equal to one process)
def test_two_process_ddp_on_cpu(tmp_path):
    run, _ = train(tmp_path, "ddp", "trainer=ddp_cpu", "trainer.max_steps=4", "trainer.val_check_interval=4")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and (run / "samples.png").is_file()


def test_readme_custom_corruption_trains_and_samples(tmp_path):
    import re
    import shutil

    from .conftest import ROOT

    example = ROOT / "experiments" / "custom_corruption"
    readme = (ROOT / "README.md").read_text()
    # the README shows the real files, verbatim
    assert (example / "fade.py").read_text() in readme
    assert (example / "conf" / "process" / "fade.yaml").read_text() in readme
    work = tmp_path / "custom"
    shutil.copytree(example, work)
    commands = re.findall(r"PYTHONPATH=\. (udm-\w+) (.*)", readme)
    (train_args, sample_args) = [args.split() for _, args in commands]
    train_args = [a for a in train_args if not a.startswith("trainer.max_steps")] + [
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "val_samples=0",
        "net.channels=16", "net.channel_mult=[1,2]", "net.attention_resolutions=[4]", "final_samples=0",
        f"hydra.run.dir={work / 'run'}",
    ]
    env = {"PYTHONPATH": str(work)}
    run_cli("udm-train", *train_args, cwd=work, env=env)
    sample_args = [f"ckpt={work / 'run'}" if a.startswith("ckpt=") else a for a in sample_args] + ["n=8"]
    proc = run_cli("udm-sample", *sample_args, cwd=work, env=env)
    samples = torch.load(Path(proc.stdout.split("written to ")[-1].strip()), weights_only=True)
    assert samples.shape == (8, 1, 8, 8)
    ckpt = torch.load(work / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["udm"]["process"]["_target_"] == "fade.Fade"


def test_cold_restoration_from_given_images(tmp_path):
    import numpy as np

    from udm.data import Digits

    run = tmp_path / "blur"
    # 2 steps and no sample grids: each grid is 50 improved-sampler steps of blur, and restoring needs no trained model
    train_in_process(*SMOKE, "process=blur", "sampler=improved", "trainer.max_steps=2", "trainer.val_check_interval=2",
                     "val_samples=0", "final_samples=0", f"hydra.run.dir={run}")
    data = Digits()
    data.setup()
    clean = tmp_path / "clean.npy"
    np.save(clean, data.test[:6].numpy())
    proc = run_cli("udm-sample", f"ckpt={run}", f"input={clean}", "degrade_input=true", "input_t=10", "sampler=improved", cwd=tmp_path)
    assert "restored-t10" in proc.stdout and "10 steps" in proc.stdout
    restored = torch.load(Path(proc.stdout.split("written to ")[-1].strip()), weights_only=True)
    assert restored.shape == (6, 1, 8, 8)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 1, 9, 9), dtype=np.float32))
    bad = run_main("udm-sample", f"ckpt={run}", f"input={wrong}")
    assert bad.returncode != 0 and "this checkpoint needs [1, 8, 8]" in bad.stderr and "Traceback" not in bad.stderr


def test_multirun_over_processes(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("udm-train", "-m", *SMOKE, "process=gaussian,blur,inpaint,pixelate", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "val_samples=0", "final_samples=4", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    done = sorted(p.parent.parent.name for p in sweep.glob("*/checkpoints/last.ckpt"))
    assert len(done) == 4
    assert [d.split("_")[0] for d in done] == ["0", "1", "2", "3"]
    assert all(f"process={p}" in d for d, p in zip(done, ["gaussian", "blur", "inpaint", "pixelate"]))
    targets = [torch.load(sweep / d / "checkpoints" / "last.ckpt", weights_only=True)["udm"]["process"]["_target_"] for d in done]
    assert targets == ["udm.processes.Gaussian", "udm.processes.Blur", "udm.processes.Inpaint", "udm.processes.Pixelate"]
