"""Pretrained diffusers UNets as udm models (udm.diffusers_folder, udm.nets.DiffusersUNet): a folder saved by
DDPMPipeline.save_pretrained opens as udm's net with its scheduler's Gaussian process, and udm's DDIM on it is
diffusers' own DDIMPipeline, to float tolerance.

Grids: udm's t is diffusers' timestep + 1 (alphas_cumprod[k] = alphabar_{k+1}). diffusers' "trailing" spacing
(k = round(T - i T / n) - 1) is udm's uniform grid (sampler=ddim); its default "leading" spacing
(k = i (T // n) + steps_offset) is udm's Explicit grid of those k + 1.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from udm.diffusers_folder import process_config
from udm.errors import UdmError
from udm.models import open_model
from udm.samplers import DDIM
from udm.samplers.grids import Explicit
from udm.samplers.loop import Sampler
from udm.samplers.steps import Mixed

from .conftest import compose_train, run_cli, run_main

diffusers = pytest.importorskip("diffusers")

STEPS, N, SEED = 10, 4, 1
ATOL = 1e-5  # on diffusers' output scale [0, 1]; float32 alphas_cumprod (diffusers) against float64 (udm)


def tiny_unet(**kwargs):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                                 layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), **kwargs)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """prediction_type -> a DDPMPipeline folder of a random tiny UNet and DDPM's scheduler (made once)."""
    made = {}

    def folder(prediction: str = "epsilon"):
        if prediction not in made:
            made[prediction] = tmp_path_factory.mktemp(prediction) / "pipeline"
            scheduler = diffusers.DDPMScheduler(prediction_type=prediction)
            diffusers.DDPMPipeline(unet=tiny_unet(), scheduler=scheduler).save_pretrained(made[prediction])
        return made[prediction]

    return folder


@pytest.fixture(params=["epsilon", "v_prediction"])
def pipeline(request, pipelines):
    return pipelines(request.param)


def diffusers_ddim(folder, spacing: str):
    """diffusers' DDIMPipeline on the folder at eta 0, from the seed's noise; its scheduler for the timesteps.
    udm's inverse step re-derives eps from the clipped x0_hat: diffusers' use_clipped_model_output=True."""
    pipe = diffusers.DDIMPipeline.from_pretrained(folder)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=N, generator=torch.Generator().manual_seed(SEED), eta=0.0, num_inference_steps=STEPS,
                  use_clipped_model_output=True, output_type="pt").images
    return images, pipe.scheduler


def udm_ddim(model, sampler):
    generator = torch.Generator().manual_seed(SEED)
    x0 = sampler(model.process, model.net, model.prior(N, generator), generator=generator)
    return (x0 / 2 + 0.5).clamp(0, 1)  # diffusers' output scale


def test_the_folder_opens_with_its_scheduler_process(pipeline):
    model = open_model(pipeline)
    prediction = json.loads((pipeline / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    assert model.recipe["process"] == {"_target_": "udm.processes.Gaussian", "T": 1000, "schedule": "linear",
                                       "parametrization": {"epsilon": "eps", "v_prediction": "v"}[prediction],
                                       "clip_denoised": True, "beta_start": 1e-4, "beta_end": 0.02}
    assert model.shape == [3, 8, 8] and model.modality == "image" and model.condition is None
    assert model.run_dir == Path("runs", "pretrained", "pipeline").resolve()  # never into the shared folder


def test_net_sees_the_diffusers_timestep(pipeline):
    model = open_model(pipeline)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 1000])
    with torch.no_grad():
        assert torch.equal(model.net(x, t), model.net.unet(x, t - 1).sample)
    torch.testing.assert_close(model.process.alphabar[1:].float(), diffusers.DDPMScheduler().alphas_cumprod)


@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_udm_ddim_is_diffusers_ddim(pipeline, spacing):
    reference, scheduler = diffusers_ddim(pipeline, spacing)
    model = open_model(pipeline)
    if spacing == "trailing":
        sampler = DDIM(steps=STEPS)
    else:
        sampler = Sampler(Mixed(eta=0.0), grid=Explicit([int(k) + 1 for k in scheduler.timesteps]))
    assert sampler.timesteps(model.process) == [int(k) + 1 for k in scheduler.timesteps]
    ours = udm_ddim(model, sampler)
    assert (ours - reference).abs().max() < ATOL


def test_udm_sample_console_script(pipelines, tmp_path):
    pipeline = pipelines("epsilon")
    reference, _ = diffusers_ddim(pipeline, "trailing")
    out = tmp_path / "samples"
    proc = run_cli("udm-sample", f"ckpt={pipeline}", "sampler=ddim", f"sampler.steps={STEPS}", f"n={N}", f"seed={SEED}",
                   "fast=plain", "device=cpu", f"out_dir={out}", cwd=tmp_path)
    samples = torch.load(proc.stdout.split("written to ")[-1].strip(), weights_only=True)
    assert samples.shape == (N, 3, 8, 8) and list(out.glob("ddim-10steps-n4-seed1.png"))
    assert ((samples / 2 + 0.5).clamp(0, 1) - reference).abs().max() < ATOL


def test_a_bare_unet_folder_with_its_scheduler_beside_it(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(UdmError, match="no scheduler_config.json.*does not say its noise schedule"):
        open_model(tmp_path / "unet")
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample").save_config(tmp_path / "unet")
    model = open_model(tmp_path / "unet")
    assert model.recipe["process"]["schedule"] == "cosine" and model.process.parametrization == "x0"
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        # the same weights and inputs; kernels may differ by an ulp between instances (thread count, SDPA path)
        torch.testing.assert_close(model.net(x, t), unet.eval()(x, t - 1).sample, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_every_beta_schedule_is_the_schedulers(schedule):
    from hydra.utils import instantiate

    scheduler = diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012, num_train_timesteps=500)
    process = instantiate(process_config(dict(scheduler.config), "scheduler_config.json"))
    assert process.T == 500 and process.alphabar[0] == 1
    torch.testing.assert_close(process.alphabar[1:].float(), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("key,value", [("beta_schedule", "sigmoid"), ("trained_betas", [0.1] * 1000),
                                       ("prediction_type", "flow"), ("rescale_betas_zero_snr", True),
                                       ("thresholding", True), ("clip_sample_range", 2.0),
                                       ("_class_name", "ScoreSdeVeScheduler")])
def test_refused_scheduler_settings_name_their_key(key, value):
    config = {**diffusers.DDPMScheduler().config, key: value}
    with pytest.raises(UdmError, match=f"{key}="):
        process_config(config, "scheduler_config.json")


def test_a_refused_setting_in_a_folder_says_which_file_and_key(pipelines, tmp_path):
    folder = tmp_path / "pipeline"
    shutil.copytree(pipelines("epsilon"), folder)
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beta_schedule": "laplace"}))
    with pytest.raises(UdmError, match=r"scheduler_config.json: beta_schedule='laplace' is not one udm represents"):
        open_model(folder)
    proc = run_cli("udm-sample", f"ckpt={folder}", "n=2", "device=cpu", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "beta_schedule='laplace'" in proc.stderr and "Traceback" not in proc.stderr


def test_class_conditional_unets_are_refused(tmp_path):
    diffusers.DDPMPipeline(unet=tiny_unet(num_class_embeds=3), scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path)
    with pytest.raises(UdmError, match="num_class_embeds=3 makes a class-conditional UNet"):
        open_model(tmp_path)


def test_the_net_refuses_a_condition_training_and_data_it_does_not_have(pipelines):
    from udm.jobs.train import refuse_pretrained_net

    pipeline = pipelines("epsilon")
    model = open_model(pipeline)
    with pytest.raises(UdmError, match="unconditional net"):
        model.net(torch.randn(1, 3, 8, 8), torch.tensor([5]), cond=torch.zeros(1, dtype=torch.long))
    with pytest.raises(UdmError, match="carries no data of its own"):
        model.data("test")  # udm-eval's metrics, Analytic-DPM
    with pytest.raises(UdmError, match="does not fine-tune it yet"):
        refuse_pretrained_net(compose_train("net=diffusers_unet", f"net.path={pipeline}").net)


def test_udm_eval_scores_a_diffusers_folder_against_the_data_it_is_given(pipelines, tmp_path):
    from .cifar_files import write_cifar

    pipeline = pipelines("epsilon")
    cifar, _, _ = write_cifar(tmp_path)
    common = (f"ckpt={pipeline}", "n=8", "sampler.steps=4", "extractor.epochs=1", f"cache_dir={tmp_path / 'cache'}",
              f"out_dir={tmp_path / 'eval'}", "progress=false", "device=cpu")
    proc = run_cli("udm-eval", *common, "metrics=[fid]", "data=cifar10", f"data.path={cifar}", "data.image_size=8",
                   cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    report = json.loads((tmp_path / "eval" / "ddim-4steps-n8-seed0.json").read_text())
    assert report["data"] == "udm.data.CIFAR10" and report["fid_real_images"] == 16 and report["fid"] > 0, proc.stdout
    wrong = run_main("udm-eval", *common, "data=cifar10", f"data.path={cifar}")
    assert wrong.returncode == 2 and "holds [3, 32, 32] samples" in wrong.stderr and "makes [3, 8, 8]" in wrong.stderr
    model = open_model(pipeline)
    data_cfg = compose_train("data=cifar10", f"data.path={cifar}", "data.image_size=8").data
    model.with_data(OmegaConf.to_container(data_cfg))
    assert model.data("test").test.shape == (16, 3, 8, 8)
