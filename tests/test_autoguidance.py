"""Autoguidance from the command line: guide=CKPT, a weaker checkpoint in place of the unconditional branch."""

import json

import pytest
import torch

from udm.errors import UdmError

from .conftest import run_cli, train_in_process

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SAMPLE = ("label=3", "n=2", "sampler.steps=3", "fast=plain", "progress=false")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny class-conditional digits model that keeps every checkpoint (step 2 and 4), as the README advises;
    trained in this process (udm-sample and udm-eval run on it as subprocesses)."""
    tmp = tmp_path_factory.mktemp("autoguidance")
    train_in_process("experiment=digits_smoke", "data.condition=label", "net.num_classes=???",
                     "trainer.max_steps=4", "trainer.val_check_interval=2", "final_samples=0", "val_samples=0",
                     "callbacks.checkpoint.save_top_k=-1", f"hydra.run.dir={tmp / 'run'}")
    return tmp, tmp / "run"


# covered by default: test_guidance::test_autoguidance_takes_the_guide_model_for_the_weak_branch and test_guidance::test_class_conditional_sampling_through_the_console_script
@pytest.mark.slow
def test_autoguidance_through_the_console_scripts(run):
    tmp, ckpts = run[0], run[1] / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    out = tmp / "out"
    run_cli("udm-sample", f"ckpt={run[1]}", *SAMPLE, f"out_dir={out}", cwd=tmp, env=ONE_THREAD)
    # the model as its own guide: x0_u = x0_c, so x0_w = x0_c + w * 0 = x0_c exactly (torch.lerp), at any w
    proc = run_cli("udm-sample", f"ckpt={run[1]}", *SAMPLE, "guidance=2", f"guide={run[1]}", f"out_dir={out}",
                   cwd=tmp, env=ONE_THREAD)
    assert "label3-w2-auto.pt" in proc.stdout
    plain = torch.load(out / "ddim-3steps-n2-seed0-label3.pt")
    assert torch.equal(plain, torch.load(out / "ddim-3steps-n2-seed0-label3-w2-auto.pt"))

    # an early checkpoint of the run guides udm-eval (CFG++ too); the JSON names the guide, NFE counts its calls
    early = ckpts / "epoch=0-step=2.ckpt"
    run_cli("udm-eval", f"ckpt={run[1]}", *SAMPLE, "guidance=2", "guidance_variant=cfg++", f"guide='{early}'",
            "metrics=[]", f"out_dir={tmp / 'eval'}", cwd=tmp, env=ONE_THREAD)
    result = json.loads((tmp / "eval" / "ddim-3steps-n2-seed0-label3-w2-cfgpp-auto.json").read_text())
    assert result["guide"] == str(early.resolve()) and result["guidance_variant"] == "cfg++"
    assert result["nfe_per_sample"] == 6.0  # 3 steps, each one call of the model and one of the guide


def test_a_guide_of_another_process_shape_or_condition_is_refused(run):
    from omegaconf import OmegaConf

    from udm.jobs.conditions import with_guidance
    from udm.models import open_model
    from udm.samplers import DDIM

    tmp, last = run[0], run[1] / "checkpoints" / "last.ckpt"
    model = open_model(run[1])

    def guide_with(name, change):
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        change(checkpoint["udm"])
        torch.save(checkpoint, tmp / name)
        return with_guidance(DDIM(steps=2), OmegaConf.create({"guidance": 2.0, "guide": str(tmp / name)}), model)

    with pytest.raises(UdmError, match=r"same process: guide=\S*cosine.ckpt has Gaussian\(T=1000, schedule=cosine.*, "
                                       r"ckpt=\S*last.ckpt has Gaussian\(T=1000, schedule=linear.* "
                                       r"\(differing in schedule\)"):
        guide_with("cosine.ckpt", lambda recipe: recipe["process"].update(schedule="cosine"))
    with pytest.raises(UdmError, match=r"guide=\S*big.ckpt makes image of shape \[1, 16, 16\], ckpt=\S*last.ckpt "):
        guide_with("big.ckpt", lambda recipe: recipe.update(shape=[1, 16, 16]))
    with pytest.raises(UdmError, match=r"guide=\S*five.ckpt was trained with the condition .*'classes': 5"):
        guide_with("five.ckpt", lambda recipe: recipe["condition"].update(classes=5))
    sampler = guide_with("bare.ckpt", lambda recipe: recipe.pop("condition"))  # an unconditional guide: called without
    assert isinstance(sampler.guidance.guide, torch.nn.Module) and sampler.guidance.guide_conditional is False
