"""Reliability and scale-out, through the console scripts.

A run killed at any moment resumes to the uninterrupted run's weights; checkpoints are never
half-written; SIGTERM and Ctrl-C save before exiting; every bad input is one message with no
traceback and nothing overwritten; a checkpoint that would run code is refused; runs repeat bit
for bit with or without loader workers; 2-process DDP equals one process with the same global
batch; a Hydra sweep runs through the submitit launcher.

Subprocesses where the process boundary is the point (kill, signals, DDP, sweeps); elsewhere the
console scripts run in this process (`run_main`), which spares a 5 s import per case.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from udm.jobs.train import fill_from_data
from udm.callbacks import AtomicCheckpointIO

from .conftest import BIN, compose_train, run_cli, run_main

EPOCH = 25  # digits: 1,617 training images in batches of 64 (the last, partial one dropped)
STEP_LR = "scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:10,gamma:0.8}"
RESUMABLE = ["experiment=digits_smoke", "trainer.max_steps=50", f"trainer.val_check_interval={EPOCH}",
             "trainer.log_every_n_steps=1", "final_samples=8", STEP_LR]
def popen_train(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "udm-train"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `path` exists (the run is still going) or fail with the run's output."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"{path} never appeared (exit {proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.01)


def ckpt(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)


def losses(run: Path) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def assert_same_training_state(a: dict, b: dict) -> None:
    """Same step, weights, EMA weights, optimizer, scheduler and RNG, bit for bit."""
    assert a["global_step"] == b["global_step"]
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    torch.testing.assert_close(a["optimizer_states"], b["optimizer_states"], rtol=0, atol=0)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert torch.equal(a["callbacks"]["RNGState"]["torch"], b["callbacks"]["RNGState"]["torch"])


def tree_hash(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- interrupted runs


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An uninterrupted run (no workers, every checkpoint kept); the same run with 2 loader workers
    SIGKILLed after its first checkpoint; and that run started again with the same command + resume=last.
    The killed run and its resume=last are subprocesses (the process boundary is the point); the reference and the
    resume in place run in this process, which spares two start-ups."""
    tmp = tmp_path_factory.mktemp("interrupted")
    reference = tmp / "reference"
    proc = run_main("udm-train", *RESUMABLE, "callbacks.checkpoint.save_top_k=-1", f"hydra.run.dir={reference}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = [*RESUMABLE, "data.num_workers=2"]
    killed, resumed = tmp / "runs" / "killed", tmp / "runs" / "resumed"
    proc = popen_train(*command, f"hydra.run.dir={killed}", cwd=tmp)
    wait_for(killed / "checkpoints" / "last.ckpt", proc)
    time.sleep(0.2)  # into the next steps: the kill lands mid-step, not right after the save
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    again = run_cli("udm-train", *command, f"hydra.run.dir={resumed}", "resume=last", cwd=tmp)
    same = tmp / "same"  # the README's "same command plus resume=" when the command set the folder: resumed in place
    shutil.copytree(killed, same)
    before_resume = losses(same)
    proc = run_main("udm-train", *command, f"hydra.run.dir={same}", f"resume={same}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(reference=reference, killed=killed, resumed=resumed, again=again, same=same,
                           before_resume=before_resume)


def test_a_resume_into_its_own_folder_keeps_every_earlier_log_row(interrupted):
    r = interrupted
    at_kill = ckpt(r.killed)["global_step"]
    assert min(r.before_resume) == 0 and max(r.before_resume) >= at_kill - 1  # the log the kill left behind
    assert losses(r.same) == losses(r.reference)  # rows 0..49 once each: the earlier ones kept, the replayed ones once
    assert_same_training_state(ckpt(r.same), ckpt(r.reference))
    assert not (r.same / ".udm-train.lock").exists()


def test_a_busy_run_folder_is_refused_and_keeps_its_recorded_config(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("the first run's config\n")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "earlier"}
    (run / ".udm-train.lock").write_text(json.dumps(holder))
    proc = run_main("udm-train", "experiment=digits_smoke", "trainer.max_steps=2", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and f"is in use by udm-train process {os.getpid()}" in proc.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == "the first run's config\n"  # Hydra's overwrite undone
    assert not (run / "checkpoints").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a lock left by a process that is gone (kill -9) is stale and taken over
    (run / ".udm-train.lock").write_text(json.dumps({**holder, "pid": dead.pid}))
    proc = run_main("udm-train", "experiment=digits_smoke", "trainer.max_steps=2", "trainer.val_check_interval=2",
                    "val_samples=0", "final_samples=0", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / ".udm-train.lock").exists()
    config = (run / ".hydra" / "config.yaml").read_text()
    again = run_main("udm-train", "experiment=digits_smoke", "seed=7", f"hydra.run.dir={run}")  # a new run, no resume=
    assert again.returncode == 2 and "already holds another run's checkpoints; continue that run with resume=" in again.stderr
    assert (run / ".hydra" / "config.yaml").read_text() == config and not (run / ".hydra.before").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt"]


def test_a_sample_that_turns_non_finite_is_an_error_naming_the_step():
    from udm.errors import UdmError
    from udm.processes import Gaussian
    from udm.samplers import DDIM

    def net(x, t):  # an eps-predictor that breaks below t = 500
        return torch.where(t[:, None] < 500, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(UdmError, match=r"NaN or infinite values at step 4 of 4 \(t=250 -> s=0\)"):
        DDIM(steps=4)(Gaussian(T=1000), net, torch.randn(2, 3))


def test_the_console_drops_only_what_the_user_cannot_act_on(monkeypatch):
    import logging

    from udm.console import VERBOSE, quiet_libraries

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.delenv(VERBOSE, raising=False)
    quiet_libraries()
    tip = logging.LogRecord(logger.name, logging.INFO, "", 0, "💡 Tip: try installing litlogger", (), None)
    useful = logging.LogRecord(logger.name, logging.INFO, "", 0, "`Trainer.fit` stopped: `max_steps=2` reached.", (), None)
    assert not logger.filter(tip) and logger.filter(useful)
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setenv(VERBOSE, "1")
    quiet_libraries()
    assert logger.filter(tip)


def test_a_killed_run_resumes_to_the_uninterrupted_weights(interrupted):
    r = interrupted
    assert f"resuming from {r.killed / 'checkpoints' / 'last.ckpt'}" in r.again.stdout
    at_kill = ckpt(r.killed)["global_step"]
    assert at_kill == EPOCH  # the checkpoint fell on an epoch boundary, and the kill came before the next one
    assert_same_training_state(ckpt(r.resumed), ckpt(r.reference))
    assert ckpt(r.resumed)["global_step"] == 50
    # the resumed run's losses are the uninterrupted run's, step for step, and so are its final samples
    after = losses(r.resumed)
    assert sorted(after) == list(range(at_kill, 50))
    assert after == {s: v for s, v in losses(r.reference).items() if s >= at_kill}
    assert (r.resumed / "samples.png").read_bytes() == (r.reference / "samples.png").read_bytes()


def test_training_is_bit_identical_with_or_without_loader_workers(interrupted):
    # two separate runs of the same seed and config, one with data.num_workers=0, one with 2, at the same step
    r = interrupted
    assert_same_training_state(ckpt(r.killed), ckpt(r.reference, f"epoch=0-step={EPOCH}.ckpt"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit(tmp_path, signum):
    run = tmp_path / "run"
    proc = popen_train("experiment=digits_smoke", "trainer.max_steps=100000", f"trainer.val_check_interval={EPOCH}",
                       f"hydra.run.dir={run}", cwd=tmp_path)
    wait_for(run / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err
    step = int(out.split("stopped at step ")[1].split(";")[0])
    saved = ckpt(run)
    assert saved["global_step"] == step >= EPOCH and f"resume={run}" in out
    assert "RNGState" in saved["callbacks"] and "current_model_state" in saved
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_a_failed_save_leaves_the_last_checkpoint_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    io_ = AtomicCheckpointIO()
    io_.save_checkpoint({"state_dict": {"w": torch.arange(10.0)}}, path)
    good = path.read_bytes()
    (tmp_path / ".last.ckpt.partial").write_bytes(b"left by a killed save")

    class DiskFull:  # the disk fills up after the weights are written
        def __reduce__(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        io_.save_checkpoint({"state_dict": {"w": torch.zeros(1 << 20)}, "then": DiskFull()}, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    io_.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


def test_the_trainer_writes_checkpoints_atomically():
    from hydra.utils import instantiate

    trainer = instantiate(compose_train("experiment=digits_smoke", "out_dir=unused").trainer, logger=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_too_little_disk_space_is_reported_before_training(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    run = tmp_path / "run"
    proc = run_main("udm-train", "experiment=digits_smoke", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and "MiB free, and what will be written takes about" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(run.glob("checkpoints/*"))


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny trained image and text checkpoints (trained in this process) and every kind of bad file."""
    tmp = tmp_path_factory.mktemp("bad")
    image, text = tmp / "image", tmp / "text"
    for run, args in ((image, ["experiment=digits_smoke", "trainer.max_steps=2", "final_samples=0", "val_samples=0"]),
                      (text, ["experiment=quatrain_mask", "net.hidden=32", "net.layers=1", "net.heads=2", "trainer.max_steps=2",
                              "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "val_samples=0", "final_samples=0"])):
        proc = run_main("udm-train", *args, f"hydra.run.dir={run}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    good = (image / "checkpoints" / "last.ckpt").read_bytes()
    (tmp / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (tmp / "head.ckpt").write_bytes(good[:10_000])  # a download cut off early: torch fails with a bare OSError
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 0}, tmp / "foreign.ckpt")  # Lightning's, not udm's
    torch.save(torch.zeros(3), tmp / "tensor.ckpt")
    (tmp / "notes.ckpt").write_text("not a checkpoint at all")
    marker = tmp / "PWNED"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {}, "udm": {"process": Payload()}}, tmp / "evil.ckpt")
    np.save(tmp / "five_d.npy", np.zeros((4, 1, 1, 8, 8), np.float32))
    np.save(tmp / "rgb.npy", np.zeros((10, 3, 8, 8), np.float32))
    np.save(tmp / "int32.npy", np.zeros((10, 1, 8, 8), np.int32))
    np.save(tmp / "range.npy", np.full((10, 1, 8, 8), 3.0, np.float32))
    np.save(tmp / "nine.npy", np.zeros((3, 1, 9, 9), np.float32))
    (tmp / "no_images").mkdir()
    (tmp / "empty.txt").write_text("")
    (tmp / "short.txt").write_text("春眠不覺曉\n")
    (tmp / "a_file").write_text("")
    np.save(tmp / "nan.npy", np.full((2, 1, 8, 8), np.nan, np.float32))
    np.save(tmp / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    np.save(tmp / "strings.npy", np.array(["a", "b"]))
    np.save(tmp / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp / "notes.npy").write_text("not an array")
    return SimpleNamespace(tmp=tmp, image=image, text=text, marker=marker)


CHECKPOINTS = {  # what a bad checkpoint file gives, for every command that reads one
    "missing": ("{tmp}/nope.ckpt", "does not exist"),
    "truncated": ("{tmp}/truncated.ckpt", "is not a readable checkpoint (truncated or not a torch file"),
    "not_torch": ("{tmp}/notes.ckpt", "is not a readable checkpoint"),
    "not_lightning": ("{tmp}/tensor.ckpt", "is not a Lightning checkpoint"),
    "foreign": ("{tmp}/foreign.ckpt", "is not a udm checkpoint"),
    "runs_code": ("{tmp}/evil.ckpt", "contains Python objects that udm will not unpickle"),
}
READERS = {
    "udm-sample": ("udm-sample", "ckpt={}"),
    "udm-generate": ("udm-generate", "ckpt={}"),
    "udm-eval": ("udm-eval", "ckpt={}", "n=2"),
    "resume": ("udm-train", "experiment=digits_smoke", "resume={}", "hydra.run.dir={tmp}/resumed"),
}
TRAIN = ("udm-train", "experiment=digits_smoke", "hydra.run.dir={tmp}/new")
TEXT = ("udm-train", "experiment=quatrain_mask", "data=text_file", "hydra.run.dir={tmp}/new")
CASES = {
    **{f"{kind}-checkpoint-{reader}": (*(a.format(path) if "{}" in a else a for a in READERS[reader]), message)
       for kind, (path, message) in CHECKPOINTS.items() for reader in READERS},
    "unknown-group-option": ("udm-train", "process=nonesuch", "Could not find 'process/nonesuch'"),
    "unknown-key": ("udm-train", "experiment=digits_smoke", "nosuch=1", "Could not override 'nosuch'"),
    "steps-not-a-number": (*TRAIN, "trainer.max_steps=abc", "trainer.max_steps='abc': trainer.max_steps is a number"),
    "negative-steps": (*TRAIN, "trainer.max_steps=-5", "trainer.max_steps must be a whole number of steps"),
    "zero-checkpoint-interval": (*TRAIN, "trainer.val_check_interval=0", "trainer.val_check_interval"),
    "zero-batch-size": (*TRAIN, "data.batch_size=0", "data.batch_size=0: data.batch_size is the training batch size"),
    "T-below-sampling-steps-train": (*TRAIN, "process.T=5", "steps must lie in 1..5"),
    "T-below-sampling-steps-sample": ("udm-sample", "ckpt={image}", "sampler.steps=5000", "steps must lie in 1..1000"),
    "negative-sampling-steps": ("udm-sample", "ckpt={image}", "sampler.steps=-3", "sampler.steps=-3: sampler.steps is the number"),
    "negative-eta-train": (*TRAIN, "sampler.eta=-0.5", "sampler.eta=-0.5: sampler.eta is the validation sampler's eta"),
    "negative-eta-sample": ("udm-sample", "ckpt={image}", "n=2", "sampler.eta=-0.5", "a number in [0, 1]"),
    "zero-samples": ("udm-sample", "ckpt={image}", "n=0", "n=0: n is the number of samples, a whole number >= 1"),
    "tokens-per-step-0": ("udm-generate", "ckpt={text}", "tokens_per_step=0", "tokens_per_step=0: tokens_per_step is the tokens restored"),
    "block-size-too-long": ("udm-generate", "ckpt={text}", "block_size=40", "block_size must be a whole number of tokens in 1..32"),
    "remasking-schedule-unknown": ("udm-generate", "ckpt={text}", "sampler=remdm", "sampler.schedule=often",
                                   "schedule='often': ReMDM's remasking schedules are rescale, cap, confidence"),
    "order-unknown": ("udm-generate", "ckpt={text}", "order=alphabetical", "order='alphabetical': order is the order tokens are restored in"),
    "template-wrong-length": ("udm-generate", "ckpt={text}", "template='朝辭白帝彩雲間，＿＿＿＿＿＿＿。'",
                              "template is 16 tokens long; this checkpoint generates exactly 32"),
    "template-unknown-characters": ("udm-generate", "ckpt={text}", "template='ABCDEFG，＿＿＿＿＿＿＿。兩岸猿聲啼不住，輕舟已過萬重山。'",
                                    "characters the tokenizer does not know: A B C D E F G"),
    "text-checkpoint-to-udm-sample": ("udm-sample", "ckpt={text}", "holds a text model"),
    "image-checkpoint-to-udm-generate": ("udm-generate", "ckpt={image}", "holds an image model"),
    "resume-another-model": (*TRAIN, "resume={text}", "was trained with a different process/net/data"),
    "images-of-five-dims": (*TRAIN, "data=array_file", "data.path={tmp}/five_d.npy", "must be images [N, C, H, W]"),
    "images-wrong-channels": (*TRAIN, "data=array_file", "data.path={tmp}/rgb.npy", "has 3 channels but data.channels=1"),
    "images-wrong-dtype": (*TRAIN, "data=array_file", "data.path={tmp}/int32.npy", "holds torch.int32"),
    "images-out-of-range": (*TRAIN, "data=array_file", "data.path={tmp}/range.npy", "must lie in [-1, 1]"),
    "empty-image-folder": (*TRAIN, "data=image_folder", "data.path={tmp}/no_images", "no images"),
    "restore-input-wrong-shape": ("udm-sample", "ckpt={image}", "input={tmp}/nine.npy", "this checkpoint needs [1, 8, 8]"),
    "empty-text-file": (*TEXT, "data.path={tmp}/empty.txt", "holds no text"),
    "text-too-short-for-a-window": (*TEXT, "data.path={tmp}/short.txt", "data.unit=window", "too short for two windows"),
    "text-too-few-lines": (*TEXT, "data.path={tmp}/short.txt", "need at least 2 to split off a test set"),
    "output-folder-uncreatable": ("udm-train", "experiment=digits_smoke", "hydra.run.dir={tmp}/a_file/run",
                                  "cannot create the output folder"),
    "checkpoint-folder-unwritable": (*TRAIN, "callbacks.checkpoint.dirpath={tmp}/a_file/ckpts", "is a file, not a folder"),
    **{f"{script}-{case}": (script, *args, message) for script, cases in {
        "udm-sample": {
            "no-ckpt": ((), "ckpt is required"),
            "n-not-a-number": (("ckpt={image}", "n=abc"), "n='abc': n is the number of samples, a whole number >= 1"),
            "n-fraction": (("ckpt={image}", "n=1.5"), "n=1.5: n is the number of samples"),
            "seed-not-a-number": (("ckpt={image}", "seed=abc"), "seed='abc': seed is the random seed"),
            "negative-seed": (("ckpt={image}", "seed=-1"), "seed=-1: seed is the random seed, a whole number in [0, 4294967295]"),
            "batch-size-0": (("ckpt={image}", "batch_size=0"), "batch_size=0: batch_size is the samples drawn at once"),
            "device-bogus": (("ckpt={image}", "device=bogus"), "device='bogus' is not a device torch knows"),
            "device-cuda": (("ckpt={image}", "device=cuda"), "asks for CUDA"),
            "eta-not-a-number": (("ckpt={image}", "sampler.eta=abc"), "sampler.eta='abc': sampler.eta is the sampler's eta"),
            "eta-above-1": (("ckpt={image}", "sampler.eta=3"), "sampler.eta=3: sampler.eta is the sampler's eta"),
            "out-dir-a-file": (("ckpt={image}", "out_dir={tmp}/a_file"), "a_file is a file, not a folder"),
            "out-dir-under-a-file": (("ckpt={image}", "out_dir={tmp}/a_file/sub"), "a_file is a file, not a folder"),
            "progress-not-bool": (("ckpt={image}", "progress=maybe"), "progress='maybe': progress is whether"),
            "input-nan": (("ckpt={image}", "input={tmp}/nan.npy"), "holds NaN or infinite values"),
            "input-empty": (("ckpt={image}", "input={tmp}/empty.npy"), "holds no images"),
            "input-strings": (("ckpt={image}", "input={tmp}/strings.npy"), "values, not pixels"),
            "input-objects": (("ckpt={image}", "input={tmp}/objects.npy"), "contains Python objects that udm will not unpickle"),
            "input-missing": (("ckpt={image}", "input={tmp}/nope.npy"), "input='{tmp}/nope.npy' does not exist"),
            "input-not-npy": (("ckpt={image}", "input={tmp}/notes.npy"), "notes.npy' is not a .npy file"),
            "input-t-without-input": (("ckpt={image}", "input_t=5"), "give input=FILE_OR_FOLDER with them"),
            "degrade-without-input": (("ckpt={image}", "degrade_input=true"), "give input=FILE_OR_FOLDER with them"),
            "label-unconditional": (("ckpt={image}", "label=3"), "was trained without class labels"),
            "guidance-without-label": (("ckpt={image}", "guidance=2"), "give label=K (or labels=all) with it"),
            "negative-guidance": (("ckpt={image}", "guidance=-1"), "guidance=-1: guidance is the guidance scale w"),
            "labels-not-all": (("ckpt={image}", "labels=some"), "labels='some': labels is n samples of every class, all"),
            "class-prior-unconditional": (("ckpt={image}", "class_prior=true"), "class_prior chooses the held-out image"),
            "guidance-variant": (("ckpt={image}", "guidance_variant=cfg3"), "guidance_variant='cfg3'"),
            "prior-noise-negative": (("ckpt={image}", "prior_noise=-1"), "prior_noise=-1: prior_noise is the cold prior's noise"),
            "checkpoint-cut-early": (("ckpt={tmp}/head.ckpt",), "head.ckpt is not a readable checkpoint"),
            "interval-not-numbers": (("ckpt={image}", "guidance=2", "guidance_interval=[a,b]"), "guidance_interval is [lo, hi]"),
            "seed-too-large": (("ckpt={image}", "seed=99999999999999999999"), "seed=99999999999999999999: seed is the random seed"),
            "corrector-steps-negative": (("ckpt={image}", "sampler=pc", "sampler.corrector_steps=-1"),
                                         "corrector_steps is a whole number of Langevin steps >= 0"),
            "snr-not-a-number": (("ckpt={image}", "sampler=pc", "sampler.snr=abc"), "sampler.snr='abc': sampler.snr is a number"),
            "compile-not-bool": (("ckpt={image}", "fast.compile=maybe"), "fast.compile='maybe': fast.compile is true or false"),
            "n-with-input": (("ckpt={image}", "n=2", "input={tmp}/nine.npy"), "n does not apply when restoring input="),
        },
        "udm-generate": {
            "no-ckpt": ((), "ckpt is required"),
            "n-not-a-number": (("ckpt={text}", "n=abc"), "n='abc': n is the number of samples"),
            "seed-not-a-number": (("ckpt={text}", "seed=abc"), "seed='abc'"),
            "batch-size-0": (("ckpt={text}", "batch_size=0"), "batch_size=0"),
            "out-dir-a-file": (("ckpt={text}", "out_dir={tmp}/a_file"), "a_file is a file, not a folder"),
            "tokens-per-step-text": (("ckpt={text}", "tokens_per_step=abc"), "tokens_per_step='abc'"),
            "negative-temperature": (("ckpt={text}", "temperature=-1"), "temperature=-1: temperature is the sampling temperature"),
            "order-unknown": (("ckpt={text}", "order=sideways"), "order='sideways': order is the order tokens are restored in"),
            "author-unconditional": (("ckpt={text}", "author=杜甫"), "author=... needs a model trained with data.condition=author"),
            "title-unconditional": (("ckpt={text}", "title=春望"), "title=... needs a model trained with data.condition=title"),
            "guidance-without-condition": (("ckpt={text}", "guidance=2"), "give author=NAME, label=NAME or title=TEXT"),
            "show-negative": (("ckpt={text}", "show=-1"), "show=-1: show is how many texts to print"),
            "metrics-not-bool": (("ckpt={text}", "metrics=maybe"), "metrics='maybe'"),
            "empty-template": (("ckpt={text}", "template=''"), "template='': template is the template to infill"),
            "device-bogus": (("ckpt={text}", "device=bogus"), "device='bogus' is not a device torch knows"),
            "steps-and-tokens-per-step": (("ckpt={text}", "sampler.steps=3", "tokens_per_step=4"), "not both"),
        },
        "udm-eval": {
            "no-ckpt": ((), "ckpt is required"),
            "n-not-a-number": (("ckpt={image}", "n=abc"), "n='abc'"),
            "n-one": (("ckpt={image}", "n=1"), "n must be at least 2 samples"),
            "devices-0": (("ckpt={image}", "devices=0"), "devices=0: devices is the sampling processes per node"),
            "out-dir-a-file": (("ckpt={image}", "out_dir={tmp}/a_file"), "a_file is a file, not a folder"),
            "cache-dir-a-file": (("ckpt={image}", "cache_dir={tmp}/a_file"), "cache_dir='{tmp}/a_file': {tmp}/a_file is a file"),
            "kid-subsets-0": (("ckpt={image}", "kid_subsets=0"), "kid_subsets=0"),
            "negative-bpd-samples": (("ckpt={image}", "bpd_samples=-1"), "bpd_samples=-1"),
            "device-bogus": (("ckpt={image}", "n=2", "device=bogus"), "device='bogus' is not a device torch knows"),
            "label-unconditional": (("ckpt={image}", "labels=all"), "was trained without class labels"),
            "unknown-metric": (("ckpt={image}", "metrics=[nope]"), "unknown metric(s) nope"),
            "nodes-without-cluster": (("ckpt={image}", "n=2", "num_nodes=2"), "this is no cluster job"),
        },
        "udm-compare": {
            "no-dir": ((), "dir is required"),
            "dir-missing": (("{tmp}/nowhere",), "is not a folder"),
            "out-dir-a-file": (("{image}", "out_dir={tmp}/a_file"), "a_file is a file, not a folder"),
            "panel-images-0": (("{image}", "panel_images=0"), "panel_images=0"),
            "empty-name": (("{image}", "name=''"), "name='': name is the report's file name"),
            "name-with-folders": (("{image}", "name=../../escaped"), "is the report's file name, without folders"),
        },
        "udm-features": {
            "device-bogus": (("data=digits", "device=bogus"), "device='bogus' is not a device torch knows"),
            "retrain-not-bool": (("data=digits", "retrain=maybe"), "retrain='maybe'"),
            "cache-dir-a-file": (("data=digits", "cache_dir={tmp}/a_file"), "a_file is a file, not a folder"),
            "lr-not-a-number": (("data=digits", "extractor.lr=abc"), "extractor.lr='abc'"),
            "zero-epochs": (("data=digits", "extractor.epochs=0"), "extractor.epochs=0"),
            "image-folder-without-path": (("data=image_folder",), "data.path is required"),
        },
        "udm-train": {
            "zero-steps": (("experiment=digits_smoke", "trainer.max_steps=0", "hydra.run.dir={tmp}/new"), "trains nothing"),
            "seed-not-a-number": (("experiment=digits_smoke", "seed=abc", "hydra.run.dir={tmp}/new"), "seed='abc'"),
            "dropout-above-1": (("experiment=digits_smoke", "condition_dropout=2", "hydra.run.dir={tmp}/new"),
                                "condition_dropout=2: condition_dropout is the probability"),
            "negative-val-samples": (("experiment=digits_smoke", "val_samples=-1", "hydra.run.dir={tmp}/new"), "val_samples=-1"),
            "channels-last-not-bool": (("experiment=digits_smoke", "channels_last=maybe", "hydra.run.dir={tmp}/new"),
                                       "channels_last='maybe'"),
            "batch-size-text": (("experiment=digits_smoke", "data.batch_size=abc", "hydra.run.dir={tmp}/new"), "data.batch_size='abc'"),
            "text-file-without-path": (("experiment=quatrain_mask", "data=text_file", "hydra.run.dir={tmp}/new"), "data.path"),
            "onecycle-divides-by-zero": (("experiment=quatrain_mask", "trainer.max_steps=20", "hydra.run.dir={tmp}/new"),
                                         "OneCycleLR cannot run 20 steps"),
            **{name: (("experiment=digits_smoke", arg, "hydra.run.dir={tmp}/new"), message) for name, arg, message in (
                ("zero-image-size", "data.image_size=0", "data.image_size and data.channels must be >= 1"),
                ("lr-not-a-number", "optimizer.lr=abc", "optimizer.lr='abc': optimizer.lr is the learning rate"),
                ("zero-channels", "net.channels=0", "net.channels and every net.channel_mult must be >= 1"),
                ("channels-not-a-number", "net.channels=abc", "net.channels='abc': net.channels is a whole number"),
                ("T-not-a-number", "process.T=abc", "process.T='abc': process.T is a whole number"),
                ("val-batches-not-a-number", "trainer.limit_val_batches=abc", "trainer.limit_val_batches='abc'"),
                ("save-top-k-not-a-number", "callbacks.checkpoint.save_top_k=abc", "callbacks.checkpoint.save_top_k='abc'"),
                ("split-seed-not-a-number", "data.split_seed=abc", "data.split_seed='abc'"),
                ("negative-gradient-clip", "trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
                ("attention-nowhere", "net.attention_resolutions=[3]", "match(es) none of the feature-map sides [8, 4]"),
            )},
        },
    }.items() for case, (args, message) in cases.items()},
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_message(files, case):
    script, *args, message = CASES[case]
    args = [a.format(tmp=files.tmp, image=files.image, text=files.text) for a in args]
    message = message.format(tmp=files.tmp, image=files.image, text=files.text)
    before = tree_hash(files.image, files.text)
    proc = run_main(script, *args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert tree_hash(files.image, files.text) == before  # the runs' folders (samples/, eval/, checkpoints/) untouched
    assert not files.marker.exists()  # the crafted checkpoint's payload never ran
    assert not list(files.tmp.glob("new/checkpoints/*")) and not list(files.tmp.glob("resumed/checkpoints/*"))
    if case.startswith("unknown-group"):
        assert "gaussian" in proc.stderr  # Hydra lists the valid options


# ---------------------------------------------------------------- scale-out


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path):
    """A deterministic objective (blur with T = 1: x_t = D_1(x0), no noise) and full-batch steps, so the
    only difference between the runs is the gradient all-reduce of 2 x 16 images against one mean over 32."""
    import lightning as L
    from hydra.utils import instantiate

    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).uniform(-1, 1, (36, 1, 8, 8)).astype(np.float32))  # 32 train, 4 held out
    common = ["experiment=digits_smoke", "data=array_file", f"data.path={images}", "data.image_size=8", "process=blur",
              "process.T=1", "optimizer._target_=torch.optim.SGD", "optimizer.lr=0.05", "trainer.max_steps=3",
              "trainer.val_check_interval=3", "val_samples=0", "final_samples=0"]
    ddp = run_cli("udm-train", *common, "trainer=ddp_cpu", "data.batch_size=16", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert "distributed_backend=gloo" in ddp.stderr + ddp.stdout
    single = run_main("udm-train", *common, "data.batch_size=32", f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = ckpt(tmp_path / "ddp"), ckpt(tmp_path / "single")
    assert a["global_step"] == b["global_step"] == 3
    cfg = compose_train(*common, "out_dir=unused")
    L.seed_everything(0, verbose=False)
    data = instantiate(cfg.data)
    data.setup("fit")
    instantiate(cfg.process)
    fill_from_data(cfg.net, data.derived, "net")
    init = instantiate(cfg.net).state_dict()  # the weights both runs started from
    moved = max((b["current_model_state"]["net." + k] - v).abs().max().item() for k, v in init.items())
    assert moved > 1e-3
    for key in ("current_model_state", "state_dict"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")


def test_ddp_and_slurm_sizes_come_from_the_trainer_config():
    cfg = compose_train("trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra/launcher=slurm",
                        "hydra.launcher.partition=gpu")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 4, 2)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.timeout_min > 0 and launcher.signal_delay_s > 0


@pytest.mark.slow  # the launcher integration; Hydra multiruns are covered by test_cli (the default suite stays under 10 minutes on 2 cores)
def test_a_sweep_through_the_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("udm-train", "-m", "hydra/launcher=local", "experiment=digits_smoke", "seed=0,1", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "final_samples=0", "val_samples=0", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    jobs = sorted(p.parent.parent for p in sweep.glob("*/checkpoints/last.ckpt"))
    assert [j.name[0] for j in jobs] == ["0", "1"]
    seeds = [[o for o in (j / ".hydra" / "overrides.yaml").read_text().split() if o.startswith("seed=")] for j in jobs]
    assert seeds == [["seed=0"], ["seed=1"]]
    assert len(list((sweep / ".submitit").glob("*/*_log.out"))) == 2  # each ran as its own submitit job
    a, b = (ckpt(j)["state_dict"] for j in jobs)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # different seeds, different runs


def test_ddp_ranks_branch_off_distinct_but_reproducible_noise_streams():
    """Every rank is seeded alike; at the start of training each takes its own stream (else all draw the same t, eps)."""
    from types import SimpleNamespace

    from udm.callbacks import RNGState

    def first_draw(rank, world_size=2):
        torch.manual_seed(0)
        RNGState().on_train_start(SimpleNamespace(world_size=world_size, global_rank=rank), None)
        return torch.rand(4)

    assert not torch.equal(first_draw(0), first_draw(1))
    assert torch.equal(first_draw(1), first_draw(1))
    untouched = first_draw(0, world_size=1)
    torch.manual_seed(0)
    assert torch.equal(untouched, torch.rand(4))  # one process: the stream is left as seeded


def test_settings_of_several_types_in_lightning_stay_open_and_the_rest_keep_their_defaults_types():
    from omegaconf import OmegaConf

    from udm.errors import UdmError
    from udm.jobs.settings import compare_types

    defaults = OmegaConf.create({"devices": 1, "val_check_interval": 500, "deterministic": False})
    for devices in ("auto", -1, [0, 1]):
        compare_types(OmegaConf.create({"devices": devices, "val_check_interval": 0.5, "deterministic": True}), defaults,
                      "trainer", strict=False)
    with pytest.raises(UdmError, match="trainer.deterministic='yes': trainer.deterministic is true or false"):
        compare_types(OmegaConf.create({"devices": 1, "val_check_interval": 1, "deterministic": "yes"}), defaults,
                      "trainer", strict=False)
    with pytest.raises(UdmError, match="net.channels=1.5: net.channels is a whole number"):
        compare_types(OmegaConf.create({"channels": 1.5}), OmegaConf.create({"channels": 32}), "net", strict=True)
