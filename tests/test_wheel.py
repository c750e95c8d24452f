"""Packaging: the wheel ships the whole package (every Hydra config included), and the console scripts of a
wheel installed into a fresh virtual environment train, sample and generate from a folder outside the repository.

The fresh environment gets no downloads: a .pth line puts this environment's site-packages (torch, lightning, ...)
after its own. A plain path line in a .pth file does not run that folder's .pth files, so the editable install
of udm living there stays inert, and the new environment imports the wheel's udm (asserted below)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from .conftest import ROOT

pytest.importorskip("setuptools")  # the build backend, used without build isolation (no downloads)

# what a fresh checkout holds; the rest (venvs, build leftovers, run folders) must not feed the build
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                    ".pytest_cache", "runs", "outputs", "multirun")
IMAGE_TRAIN = ["experiment=digits_smoke", "trainer.max_steps=2", "trainer.val_check_interval=2", "val_samples=2",
               "final_samples=4", "sampler.steps=2"]
TEXT_TRAIN = ["experiment=quatrain_mask", "net.hidden=32", "net.layers=1", "net.heads=2", "trainer.max_steps=2",
              "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "val_samples=2", "final_samples=2"]
QUATRAIN_CHARS = 32  # data.form=quatrain: 4 lines of 7 characters and punctuation, one character per token


def package_files(root: Path) -> set[str]:
    """Every file of the udm package in a source tree, as a wheel names it (udm/...)."""
    return {
        p.relative_to(root).as_posix()
        for p in (root / "udm").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and not p.name.startswith(".")
    }


def conf_yaml(names) -> set[str]:
    return {n for n in names if n.startswith("udm/conf/") and n.endswith(".yaml")}


def run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        command = " ".join(map(str, cmd))
        raise AssertionError(f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def clean_env(venv: Path | None = None) -> dict:
    """This environment, without anything that could put the repository's udm on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env.update(PYTHONWARNINGS="ignore", PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if venv is not None:
        env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the source tree: the build neither writes build/ into the repository nor reads stale files from it."""
    src = tmp_path_factory.mktemp("src") / "udm-src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source],
        cwd=dist, env=clean_env())
    (whl,) = dist.glob("udm-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; dependencies come from this environment."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent, env=clean_env())
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv.parent,
                  env=clean_env(venv)).stdout.strip()
    (Path(purelib) / "_udm_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip comes from this environment through the .pth; --ignore-installed: never touch the editable udm there
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel], cwd=venv.parent,
        env=clean_env(venv))
    return venv


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("outside") / "work"  # outside the repository: no conf/ or udm/ next to it
    work.mkdir()
    assert ROOT not in work.parents
    return work


def udm_cli(venv: Path, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([venv / "bin" / script, *args], cwd=cwd, env=clean_env(venv))


def train(venv: Path, work: Path, pattern: str, *overrides: str) -> Path:
    proc = udm_cli(venv, "udm-train", *overrides, cwd=work)
    ckpts = sorted(work.glob(f"runs/{pattern}/*/checkpoints/last.ckpt"))
    assert len(ckpts) == 1, f"no single run folder runs/{pattern}/*/ in {work}:\n{proc.stdout[-2000:]}"
    return ckpts[0].parent.parent


def new_files(folder: Path, before: set[Path]) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} - before


def test_wheel_ships_every_module_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"udm/conf/train.yaml", "udm/conf/sampler/ddim.yaml"} <= names
    assert conf_yaml(names) == conf_yaml(package_files(ROOT)), "the wheel's configs differ from udm/conf"
    missing = package_files(ROOT) - names
    assert not missing, f"files of the package missing from the wheel: {sorted(missing)}"


def test_sdist_ships_every_config(source, tmp_path):
    """pip install from an sdist (what `python -m build` and PyPI go through) must get the configs too."""
    backend = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    name = run([sys.executable, "-c", backend, tmp_path], cwd=source, env=clean_env()).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        top = name.removesuffix(".tar.gz") + "/"
        names = {m.name.removeprefix(top) for m in sdist.getmembers() if m.isfile()}
    assert conf_yaml(names) == conf_yaml(package_files(ROOT)), "the sdist's configs differ from udm/conf"


def test_the_installed_wheel_is_what_runs(venv, work):
    site = Path(sysconfig.get_paths()["purelib"])
    probe = ("import importlib.util, sys, udm, udm.cli; "
             "print(udm.__file__); print(udm.cli.CONF_DIR); print(importlib.util.find_spec('torch').origin); "
             "print(sorted(n for n, m in sys.modules.items() "
             f"if (getattr(m, '__file__', None) or '').startswith({str(ROOT / 'udm')!r})))")
    udm_file, conf_dir, torch_file, from_repo = udm_cli(venv, "python", "-c", probe, cwd=work).stdout.splitlines()
    venv, site = venv.resolve(), site.resolve()
    assert venv in Path(udm_file).resolve().parents, f"the new environment imports {udm_file}, not the wheel's udm"
    assert venv in Path(conf_dir).resolve().parents and (Path(conf_dir) / "train.yaml").is_file()
    assert site in Path(torch_file).resolve().parents  # dependencies reused, not downloaded
    assert from_repo == "[]", f"modules imported from the repository: {from_repo}"
    for script in ("udm-train", "udm-sample", "udm-generate", "udm-features", "udm-eval", "udm-compare"):
        assert (venv / "bin" / script).is_file(), f"console script {script} not installed"


@pytest.fixture(scope="module")
def image_run(venv, work) -> Path:
    return train(venv, work, "digits-*", *IMAGE_TRAIN)


@pytest.fixture(scope="module")
def text_run(venv, work) -> Path:
    return train(venv, work, "poems-*", *TEXT_TRAIN)


def test_udm_train_from_outside_the_repository(image_run):
    assert (image_run / "samples.png").is_file()
    assert (image_run / ".hydra" / "config.yaml").is_file()


def test_udm_sample_from_outside_the_repository(venv, work, image_run):
    before = {p for p in work.rglob("*") if p.is_file()}
    udm_cli(venv, "udm-sample", f"ckpt={image_run}", "n=4", "sampler.steps=5", cwd=work)
    made = new_files(work, before)
    assert [p for p in made if p.suffix == ".png"], f"no PNG grid among {sorted(map(str, made))}"
    (tensor,) = [p for p in made if p.suffix == ".pt"]
    assert torch.load(tensor, weights_only=True).shape == (4, 1, 8, 8)


# covered by default: test_udm_train_from_outside_the_repository and test_udm_sample_from_outside_the_repository (the wheel's scripts), test_cli_text (text)
@pytest.mark.slow
def test_udm_train_and_generate_text_from_outside_the_repository(venv, work, text_run):
    lines = (text_run / "samples.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all(len(line) == QUATRAIN_CHARS for line in lines)
    before = {p for p in work.rglob("*") if p.is_file()}
    udm_cli(venv, "udm-generate", f"ckpt={text_run}", "n=2", "metrics=false", cwd=work)
    (txt,) = [p for p in new_files(work, before) if p.suffix == ".txt"]
    texts = txt.read_text(encoding="utf-8").splitlines()
    assert len(texts) == 2 and all(len(t) == QUATRAIN_CHARS and "[MASK]" not in t for t in texts), texts
