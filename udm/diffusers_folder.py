"""Pretrained diffusers UNets as udm models: where a folder saved by diffusers keeps the UNet and its scheduler's
config, and the recipe (process, net, shape) udm reads off them. Nothing here imports diffusers.

Two layouts are read:

    PIPELINE/unet/config.json + diffusion_pytorch_model.safetensors,  PIPELINE/scheduler/scheduler_config.json
        (DDPMPipeline.save_pretrained; PIPELINE/unet may be given too: the pipeline's scheduler/ is its sibling)
    UNET/config.json + diffusion_pytorch_model.safetensors + scheduler_config.json beside them
        (UNet2DModel.save_pretrained, then the scheduler's save_config into the same folder)

A UNet without a scheduler config is refused: the UNet alone does not say its noise schedule or what it predicts,
and a guess (DDPM's defaults) would sample noise from a v-prediction or cosine model without a word.

The scheduler config becomes udm's Gaussian process (udm.processes.Gaussian):

    num_train_timesteps   T
    beta_schedule         linear, scaled_linear (with beta_start, beta_end), squaredcos_cap_v2 -> cosine (Improved
                          DDPM's betas, the same numbers)
    prediction_type       epsilon -> eps, v_prediction -> v, sample -> x0
    clip_sample           clip_denoised (with clip_sample_range 1: udm clips x0_hat to [-1, 1]); absent, True for
                          DDPM's and DDIM's schedulers (their default) and False for the others, which never clip

other keys it does not set take DDPMScheduler's defaults, as diffusers does. Refused, naming the key: trained_betas,
rescale_betas_zero_snr, thresholding, timestep_type other than discrete, other beta schedules and prediction types,
schedulers of another family (VE, flow matching); UNets with a class embedding (num_class_embeds,
class_embed_type) or an output of other than in_channels channels (learned variances). The keys that choose how to
sample (timestep_spacing, steps_offset, variance_type, set_alpha_to_one, ...) are no part of the process: udm's
samplers choose their own grid.

Time: diffusers' alphas_cumprod[k], k = 0..T-1, is udm's alphabar_{k+1} (udm's t = 0 is the data), so udm's time t
is the diffusers timestep k = t - 1 (udm.nets.DiffusersUNet).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from udm.errors import UdmError

CONFIG, WEIGHTS, SCHEDULER = "config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"
UNET_CLASS = "UNet2DModel"
NET_TARGET = "udm.nets.DiffusersUNet"

# the discrete-time VP schedulers: the same betas from the same keys, differing only in how they sample
VP_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
                 "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                 "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler")
DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
            "prediction_type": "epsilon", "clip_sample": True, "clip_sample_range": 1.0}  # DDPMScheduler's
CLIPPING_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")  # those whose clip_sample defaults to True
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
UNSUPPORTED = {  # key: (the value udm can represent, why another one is refused)
    "trained_betas": (None, "a table of betas of its own"),
    "rescale_betas_zero_snr": (False, "zero terminal SNR (alphabar_T = 0)"),
    "thresholding": (False, "dynamic thresholding of x0_hat"),
    "timestep_type": ("discrete", "a net whose time input is not the discrete timestep"),
}


def unet_folder(path: str | Path) -> Path | None:
    """The folder holding the UNet's config.json: PATH/unet of a pipeline, or PATH itself; None when neither."""
    path = Path(path).expanduser()
    for folder in (path / "unet", path):
        if (folder / CONFIG).is_file():
            return folder
    return None


def is_diffusers_folder(path: str | Path) -> bool:
    return Path(path).expanduser().is_dir() and unet_folder(path) is not None


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UdmError(f"{path} is not a readable JSON config ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(value, dict):
        raise UdmError(f"{path} is not a JSON object of settings")
    return value


def unet_config(folder: Path) -> dict[str, Any]:
    """The UNet's config.json, checked: an unconditional UNet2DModel with safetensors weights, out = in channels."""
    config = read_json(folder / CONFIG)
    kind = config.get("_class_name")
    if kind != UNET_CLASS:
        raise UdmError(f"{folder / CONFIG}: _class_name is {kind!r}; udm reads unconditional {UNET_CLASS}s "
                       f"(a UNet2DConditionModel needs a text encoder udm does not have)")
    for key in ("num_class_embeds", "class_embed_type"):
        if config.get(key) is not None:
            raise UdmError(f"{folder / CONFIG}: {key}={config[key]!r} makes a class-conditional UNet, which udm does not "
                           f"read from diffusers yet; use an unconditional one")
    out_channels = config.get("out_channels", config.get("in_channels", 3))
    if out_channels != config.get("in_channels", 3):
        raise UdmError(f"{folder / CONFIG}: out_channels={out_channels} differs from in_channels="
                       f"{config.get('in_channels', 3)} (a UNet that also predicts its variances); udm reads UNets "
                       f"whose output is shaped like their input")
    if not (folder / WEIGHTS).is_file():
        raise UdmError(f"{folder} holds no {WEIGHTS}; udm reads safetensors weights only (loading them runs no code): "
                       f"save the UNet with save_pretrained(..., safe_serialization=True)")
    return config


def unet_shape(config: dict[str, Any]) -> list[int]:
    """[C, H, W] of the UNet's samples: in_channels and sample_size (an int, or [H, W])."""
    size = config.get("sample_size")
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise UdmError(f"the UNet's config gives sample_size={config.get('sample_size')!r}; udm needs the image size "
                       f"(an int, or [height, width]) to draw samples of")
    return [int(config.get("in_channels", 3)), *size]


def scheduler_file(folder: Path) -> Path:
    """The scheduler config beside the UNet, or in the pipeline's scheduler/ folder next to unet/."""
    for candidate in (folder / SCHEDULER, folder / "scheduler" / SCHEDULER, folder.parent / "scheduler" / SCHEDULER):
        if candidate.is_file():
            return candidate
    raise UdmError(f"no {SCHEDULER} for the UNet in {folder} (looked beside it and in a pipeline's scheduler/); the "
                   f"UNet alone does not say its noise schedule or what it predicts. Save the scheduler it was trained "
                   f"with next to it, e.g. DDPMScheduler(...).save_config('{folder}')")


def process_config(scheduler: dict[str, Any], source: Path | str) -> dict[str, Any]:
    """udm's Gaussian process (a plain config) of a diffusers scheduler config; see the module docstring."""
    kind = scheduler.get("_class_name", "DDPMScheduler")
    if kind not in VP_SCHEDULERS:
        raise UdmError(f"{source}: _class_name={kind!r} is not one of diffusers' discrete variance-preserving "
                       f"schedulers, which udm reads ({', '.join(VP_SCHEDULERS)})")
    for key, (allowed, what) in UNSUPPORTED.items():
        if scheduler.get(key) not in (None, allowed):
            raise UdmError(f"{source}: {key}={scheduler[key]!r} asks for {what}, which udm's Gaussian process cannot "
                           f"represent (it takes {key}={allowed!r})")
    # clip_sample defaults to True only in the schedulers that have the key (DDPM's, DDIM's); the others never clip
    defaults = {**DEFAULTS, "clip_sample": kind in CLIPPING_SCHEDULERS}
    get = {**defaults, **{k: v for k, v in scheduler.items() if k in DEFAULTS}}.__getitem__
    if get("beta_schedule") not in BETA_SCHEDULES:
        raise UdmError(f"{source}: beta_schedule={get('beta_schedule')!r} is not one udm represents; it reads "
                       f"{', '.join(BETA_SCHEDULES)}")
    if get("prediction_type") not in PREDICTIONS:
        raise UdmError(f"{source}: prediction_type={get('prediction_type')!r} is not one udm represents; it reads "
                       f"{', '.join(PREDICTIONS)}")
    if get("clip_sample") and float(get("clip_sample_range")) != 1.0:
        raise UdmError(f"{source}: clip_sample_range={get('clip_sample_range')!r}; udm clips x0_hat to [-1, 1] "
                       f"(clip_sample_range=1) or not at all (clip_sample=false)")
    T = get("num_train_timesteps")
    if type(T) is not int or T < 1:
        raise UdmError(f"{source}: num_train_timesteps={T!r} must be a positive whole number of steps")
    process = {"_target_": "udm.processes.Gaussian", "T": T, "schedule": BETA_SCHEDULES[get("beta_schedule")],
               "parametrization": PREDICTIONS[get("prediction_type")], "clip_denoised": bool(get("clip_sample"))}
    if process["schedule"] != "cosine":
        process.update(beta_start=float(get("beta_start")), beta_end=float(get("beta_end")))
    return process


def diffusers_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe of a diffusers folder, as a udm checkpoint records one: the scheduler's process, the UNet as
    udm's net (its folder, absolute), the sample shape; unconditional images with no data of their own."""
    folder = unet_folder(path)
    if folder is None:
        raise UdmError(f"{path} holds no diffusers UNet (looked for unet/{CONFIG} and {CONFIG})")
    folder = folder.resolve()
    config, schedule = unet_config(folder), scheduler_file(folder)
    return {
        "process": process_config(read_json(schedule), schedule),
        "net": {"_target_": NET_TARGET, "path": str(folder)},
        "shape": unet_shape(config),
        "modality": "image",
        "condition": None,
        "pretrained": {"format": "diffusers", "unet": str(folder), "scheduler": str(schedule.resolve())},
    }
