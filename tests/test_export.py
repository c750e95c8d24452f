"""udm-export: a checkpoint to the sharing format (model.safetensors + udm.yaml) and back, bit for bit: the same
weights, the same samples from the same seed, a text model's tokenizer with it; and what it refuses."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from udm.errors import UdmError
from udm.jobs.export import export
from udm.jobs.train import build_recipe, fill_from_data
from udm.models import open_model
from udm.samplers import DDIM

from .conftest import compose_train, run_cli, train_in_process


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny trained digits run, and its export through the console script."""
    tmp = tmp_path_factory.mktemp("export")
    run, out = tmp / "run", tmp / "shared" / "digits"
    train_in_process("experiment=digits_smoke", "trainer.max_steps=2", "trainer.val_check_interval=2", "val_samples=0",
                     "final_samples=0", f"hydra.run.dir={run}")
    proc = run_cli("udm-export", f"ckpt={run}", f"out={out}", cwd=tmp)
    assert f"written to {out}" in proc.stdout
    return tmp, run, out


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def ddim_samples(model, n: int = 6, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return DDIM(steps=5)(model.process, model.net, model.prior(n, generator), generator=generator)


def test_the_export_reloads_bit_for_bit(exported):
    _, run, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "udm.yaml"]
    original, shared = open_model(run), open_model(out)
    assert same_state(original.net, shared.net) and same_state(original.process, shared.process)
    assert shared.recipe == original.recipe and shared.global_step == original.global_step == 2
    assert torch.equal(ddim_samples(original), ddim_samples(shared))
    assert shared.run_dir == (Path("runs") / "pretrained" / out.name).resolve()  # outputs never go into the export


def test_udm_sample_reads_the_export_as_the_run(exported):
    tmp, run, out = exported
    tensors = []
    for ckpt in (run, out):
        proc = run_cli("udm-sample", f"ckpt={ckpt}", "n=4", "sampler.steps=5", "fast=plain", "device=cpu",
                       f"out_dir={tmp / 'samples' / ckpt.name}", cwd=tmp)
        tensors.append(torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True))
    assert torch.equal(*tensors)


def test_a_non_empty_out_is_refused_and_kept(exported, tmp_path):
    _, run, _ = exported
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UdmError, match="already holds files; udm-export writes only into a new or empty folder"):
        export(OmegaConf.create({"ckpt": str(run), "out": str(out)}))
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    export(OmegaConf.create({"ckpt": str(run), "out": str(tmp_path / "empty")}))  # a new folder is fine; so is an empty one
    (tmp_path / "made").mkdir()
    export(OmegaConf.create({"ckpt": str(run), "out": str(tmp_path / "made")}))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_missing_and_foreign_checkpoints_are_refused(exported, tmp_path):
    _, _, out = exported
    foreign = tmp_path / "notes.ckpt"
    foreign.write_text("not a checkpoint")
    for ckpt, message in ((tmp_path / "nowhere", "does not exist"), (foreign, "is not a readable checkpoint"),
                          (tmp_path, "no checkpoint in folder"), (out, "is already a udm export")):
        with pytest.raises(UdmError, match=message):
            export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "out")}))
    assert not (tmp_path / "out").exists()
    proc = run_cli("udm-export", f"ckpt={foreign}", f"out={tmp_path / 'out'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a readable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_a_text_models_tokenizer_travels_with_it(tmp_path):
    """A text checkpoint (an untrained tiny transformer: what is exported does not depend on training)."""
    cfg = compose_train("experiment=quatrain_mask", "net.hidden=32", "net.layers=1", "net.heads=2")
    data = instantiate(cfg.data)
    data.setup("fit")
    fill_from_data(cfg.process, data.derived, "process")
    fill_from_data(cfg.net, data.derived, "net")
    net = instantiate(cfg.net)
    ckpt = tmp_path / "text.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "udm": build_recipe(cfg, data),
                "global_step": 0}, ckpt)
    export(OmegaConf.create({"ckpt": str(ckpt), "out": str(tmp_path / "text")}))
    original, shared = open_model(ckpt), open_model(tmp_path / "text")
    assert shared.modality == "text" and shared.recipe["tokenizer"] == original.recipe["tokenizer"]
    assert same_state(original.net, shared.net)
    ids = torch.tensor([list(range(5, 5 + original.shape[0]))])
    assert shared.decode(ids) == original.decode(ids)
    sampler = instantiate(cfg.sampler)
    drawn = [sampler(m.process, m.net, m.prior(2, torch.Generator().manual_seed(0)), generator=torch.Generator().manual_seed(1))
             for m in (original, shared)]
    assert torch.equal(*drawn)
