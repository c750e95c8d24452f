import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir

from udm import cli
from udm.cli import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _float_defaults():
    torch.manual_seed(0)
    yield


def compose_train(*overrides: str):
    """The real train config with overrides, as udm-train would see it (hydra: keys resolved)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)


def run_cli(script: str, *args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script the way a user does; returns the finished process (text output)."""
    proc = subprocess.run(
        [str(BIN / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


MAINS = {"udm-train": cli.train_main, "udm-sample": cli.sample_main, "udm-generate": cli.generate_main,
         "udm-eval": cli.eval_main, "udm-compare": cli.compare_main, "udm-features": cli.features_main}


def run_main(script: str, *args: str) -> SimpleNamespace:
    """A console script run in this process: its exit code and what it wrote to stdout and stderr. Spares the
    5-10 s start-up of a subprocess where the process boundary is not the point (a fixture's checkpoint, a refusal).
    The run's HydraConfig is dropped afterwards: later code in this process must not read its command line."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    before = HydraConfig.instance().cfg
    out, err, code = io.StringIO(), io.StringIO(), 0
    with mock.patch.object(sys, "argv", [script, *args]), mock.patch.dict(os.environ, {"PYTHONWARNINGS": "ignore"}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            MAINS[script]()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        finally:
            HydraConfig.instance().cfg = before
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def train_in_process(*args: str) -> SimpleNamespace:
    """udm-train run in this process (run_main), failing the test with its stderr if it fails."""
    proc = run_main("udm-train", *args)
    if proc.returncode != 0:
        raise AssertionError(f"udm-train {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
