"""Every config composes and every group option instantiates (template's test_configs)."""

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from udm.cli import CONF_DIR

from udm.jobs.train import fill_from_data

from .cifar_files import write_cifar
from .conftest import compose_train

TOKENS = {"length": 8, "vocab_size": 20, "mask_id": 2, "special_ids": [0, 1, 2]}

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def build(cfg):
    """Data, process and net as udm-train builds them (??? keys filled from the data)."""
    data = instantiate(cfg.data)
    data.setup("fit")
    fill_from_data(cfg.process, data.derived, "process")
    fill_from_data(cfg.net, data.derived, "net")
    return data, instantiate(cfg.process), instantiate(cfg.net)


NEEDS_FILES = {"cifar10": write_cifar}  # data groups whose experiments read local files: a small folder made for the test


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_train(f"experiment={experiment}")
    data_group = cfg.hydra.runtime.choices.data
    if data_group in NEEDS_FILES:
        cfg = compose_train(f"experiment={experiment}", f"data.path={NEEDS_FILES[data_group](tmp_path)[0]}")
    data, process, net = build(cfg)
    x0 = data.train[:2]
    t = torch.full((2,), process.T)
    x_T = process.prior(x0)
    out = net(x_T, t)
    if x_T.is_floating_point():  # images, latents: the raw output is shaped like x_T
        assert out.shape == x_T.shape
    else:  # tokens: logits over the tokenizer's vocabulary
        assert out.shape == (*x0.shape, len(data.tokenizer))
    instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    instantiate(cfg.sampler).check(process)  # the experiment's sampler fits its process (or says why not)


@pytest.mark.parametrize("group", ["process", "net", "sampler", "trainer"])
def test_every_group_option_instantiates(group):
    for option in options(group):
        if option == "diffusers_unet":  # a pretrained folder's UNet: built and checked in tests/test_diffusers_unet.py
            continue
        if option == "mlp":
            cfg = compose_train("experiment=toy_smld")
            fill_from_data(cfg.net, {"dim": 2}, "net")
        elif option.startswith("token_") or option in ("transformer", "latent_tokens"):
            experiment = "quatrain_latent" if option == "latent_tokens" else "quatrain_mask"
            cfg = compose_train(f"experiment={experiment}", f"{group}={option}")
            fill_from_data(cfg.process, TOKENS, "process")
            fill_from_data(cfg.net, TOKENS, "net")
        else:
            cfg = compose_train(f"{group}={option}", "data=digits", "net.attention_resolutions=[4]")
            fill_from_data(cfg.net, {}, "net")  # unlabelled digits: the net's condition keys (???) become null
        if group == "trainer" and option == "fsdp" and not torch.cuda.is_available():
            with pytest.raises(Exception, match="requires a GPU"):  # Lightning's FSDP is CUDA-only; the message says so
                instantiate(cfg[group], logger=False)
            continue
        obj = instantiate(cfg[group], logger=False) if group == "trainer" else instantiate(cfg[group])
        check_built(group, option, obj, cfg)


def check_built(group, option, obj, cfg):
    """What each group's objects must do once built (not merely exist)."""
    import lightning as L

    from udm.errors import UdmError
    from udm.processes import ForwardProcess, Gaussian

    if group == "process":
        assert isinstance(obj, ForwardProcess) and obj.T >= 1 and obj.describe().startswith(type(obj).__name__), option
    elif group == "net":  # the model call takes a condition; an unconditional net refuses one instead of ignoring it
        params = inspect.signature(obj.forward).parameters
        assert list(params)[-1] == "cond" and params["cond"].default is None, option
        with pytest.raises(UdmError, match="unconditional net"):
            obj.forward(None, None, cond=torch.zeros(1))
    elif group == "sampler":  # every sampler grids the times it visits the same way: decreasing, inside 1..T
        ts = obj.timesteps(Gaussian(T=100), None)
        steps = cfg.sampler.get("steps")
        assert ts[0] == 100 and ts == sorted(set(ts), reverse=True) and ts[-1] >= 1, option
        assert len(ts) == (min(steps, 100) if steps else 100), option
    else:
        assert isinstance(obj, L.Trainer) and obj.max_steps == cfg.trainer.max_steps, option


@pytest.mark.parametrize("option", options("judge"))
def test_every_judge_option_builds_a_language_model_of_the_data_tokens(option):
    """The fluency judge's net (udm.jobs.judge fills vocab_size and length from the data): NLLs per token."""
    from omegaconf import OmegaConf

    net = instantiate(OmegaConf.load(Path(CONF_DIR) / "judge" / f"{option}.yaml").net, vocab_size=20, length=8)
    nll = net.nll(torch.randint(0, 20, (3, 8)))
    assert nll.shape == (3, 8) and bool((nll > 0).all())


def test_data_options_compose():
    for option in options("data"):
        overrides = [f"data={option}"] + (["data.path=/nonexistent"] if option in ("image_folder", "array_file", "text_file") else [])
        cfg = compose_train(*overrides)
        assert cfg.data._target_.startswith("udm.data.")
        if "image_size" in cfg.data:
            assert cfg.net.in_channels == cfg.data.channels


def test_readme_names_exist():
    cfg = compose_train("process=gaussian", "net=unet", "data=mnist", "sampler=ddim", "sampler.steps=50", "sampler.eta=0")
    assert cfg.sampler.steps == 50 and cfg.trainer.max_steps > 0
    cfg = compose_train("sampler=ddpm", "trainer.max_steps=20", "data=digits")
    assert cfg.trainer.max_steps == 20 and cfg.sampler.steps is None and instantiate(cfg.sampler).step.eta == 1.0
