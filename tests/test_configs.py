"""Every config composes and every group option instantiates (template's test_configs)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from udm.cli import CONF_DIR

from .conftest import compose_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train(f"experiment={experiment}")
    process, net = instantiate(cfg.process), instantiate(cfg.net)
    shape = (2, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    x0 = torch.zeros(shape)
    t = torch.full((2,), process.T)
    assert net(process.prior(x0), t).shape == shape
    instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert callable(instantiate(cfg.sampler))


@pytest.mark.parametrize("group", ["process", "net", "sampler", "trainer"])
def test_every_group_option_instantiates(group):
    for option in options(group):
        cfg = compose_train(f"{group}={option}", "data=digits", "net.attention_resolutions=[4]")
        obj = instantiate(cfg[group], logger=False) if group == "trainer" else instantiate(cfg[group])
        assert obj is not None, option


def test_data_options_compose():
    for option in options("data"):
        overrides = [f"data={option}"] + ([f"data.path=/nonexistent"] if option in ("image_folder", "array_file") else [])
        cfg = compose_train(*overrides)
        assert cfg.data._target_.startswith("udm.data.")
        assert cfg.net.in_channels == cfg.data.channels


def test_readme_names_exist():
    cfg = compose_train("process=gaussian", "net=unet", "data=mnist", "sampler=ddim", "sampler.steps=50", "sampler.eta=0")
    assert cfg.sampler.steps == 50 and cfg.trainer.max_steps > 0
    cfg = compose_train("sampler=ddpm", "trainer.max_steps=20", "data=digits")
    assert cfg.trainer.max_steps == 20 and cfg.sampler.steps is None and cfg.sampler.eta == 1.0
