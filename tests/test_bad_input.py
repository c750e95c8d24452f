"""Bad input ends in one clear message on stderr, no traceback, and nothing of the user's is overwritten."""

from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import run_cli, train_in_process


def fails(script, *args, cwd, message):
    proc = run_cli(script, *args, cwd=cwd, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny trained checkpoint for the refusals below; trained in this process (the refusals run as subprocesses)."""
    tmp = tmp_path_factory.mktemp("bad")
    run = tmp / "run"
    train_in_process("experiment=digits_smoke", "trainer.max_steps=2", "final_samples=0", f"hydra.run.dir={run}")
    return run / "checkpoints" / "last.ckpt"


def test_unknown_group_option(tmp_path):
    proc = fails("udm-train", "process=nonesuch", cwd=tmp_path, message="Could not find 'process/nonesuch'")
    assert "gaussian" in proc.stderr  # the valid options are listed


def test_unknown_schedule(tmp_path):
    fails("udm-train", "experiment=digits_smoke", "process.schedule=quadratic", cwd=tmp_path, message="unknown schedule 'quadratic'")


def test_missing_checkpoint(tmp_path):
    fails("udm-sample", f"ckpt={tmp_path / 'nope.ckpt'}", cwd=tmp_path, message="does not exist")


def test_foreign_and_truncated_checkpoints(tmp_path, ckpt):
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    fails("udm-sample", f"ckpt={foreign}", cwd=tmp_path, message="is not a udm checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    fails("udm-sample", f"ckpt={truncated}", cwd=tmp_path, message="not a readable checkpoint")


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "udm": {"process": Evil()}}, evil, pickle_protocol=2)
    fails("udm-sample", f"ckpt={evil}", cwd=tmp_path, message="contains Python objects that udm will not unpickle")
    assert not marker.exists()


def test_checkpoint_from_another_process_or_net(tmp_path, ckpt):
    fails("udm-sample", f"ckpt={ckpt}", "process={_target_:udm.processes.Gaussian,schedule:cosine}", cwd=tmp_path,
          message="different process/net/data")
    fails("udm-train", "experiment=digits_smoke", f"resume={ckpt}", "net.channels=32", cwd=tmp_path,
          message="net.channels: checkpoint has 16, config has 32")


# covered by default: test_reliability::test_bad_input_is_one_clear_message[images-of-five-dims|images-out-of-range|empty-image-folder]
@pytest.mark.slow
def test_data_of_the_wrong_shape_or_range(tmp_path):
    bad_shape = tmp_path / "five_d.npy"
    np.save(bad_shape, np.zeros((4, 1, 1, 8, 8), dtype=np.float32))
    fails("udm-train", "data=array_file", f"data.path={bad_shape}", cwd=tmp_path, message="must be images [N, C, H, W]")
    bad_range = tmp_path / "range.npy"
    np.save(bad_range, np.full((10, 28, 28), 3.0, dtype=np.float32))
    fails("udm-train", "data=array_file", f"data.path={bad_range}", cwd=tmp_path, message="must lie in [-1, 1]")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails("udm-train", "data=image_folder", f"data.path={empty}", cwd=tmp_path, message="no images")


def test_bad_sampler_arguments(tmp_path, ckpt):
    fails("udm-sample", f"ckpt={ckpt}", "sampler.steps=5000", cwd=tmp_path, message="steps must lie in 1..")


def test_existing_outputs_are_not_overwritten(tmp_path, ckpt):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "ddim-2steps-n2-seed0.png"
    keep.write_bytes(b"user's file")
    run_cli("udm-sample", f"ckpt={ckpt}", "n=2", f"out_dir={out}", "sampler.steps=2", cwd=tmp_path)
    assert keep.read_bytes() == b"user's file"
