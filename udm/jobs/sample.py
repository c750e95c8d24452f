"""sample_images(cfg): checkpoint -> process + net -> a sampler -> PNG grid + tensor file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from udm.distill.recipe import with_student_sampler
from udm.errors import UdmError
from udm.fast import describe_net
from udm.jobs.conditions import describe as describe_conditions
from udm.jobs.conditions import batches, prior_labels, requested_labels, with_guidance
from udm.jobs.outputs import check_output_folder
from udm.jobs.settings import chosen_keys, command_line_keys
from udm.models import open_model
from udm.processes import Cold


def fresh_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem.suffix, or stem-1, stem-2, ... so nothing already there is overwritten."""
    path, i = folder / f"{stem}{suffix}", 0
    while path.exists():
        i += 1
        path = folder / f"{stem}-{i}{suffix}"
    return path


def load_input(path: str, shape: list[int]) -> torch.Tensor:
    """The user's images to restore, [N, C, H, W] in [-1, 1], of exactly the checkpoint's shape."""
    from udm.data import ArrayFile, ImageFolder

    c, h, w = shape
    source = Path(path).expanduser()
    if not source.exists():
        raise UdmError(f"input={path!r} does not exist; give a folder of images or a .npy/.pt file")
    data = (ImageFolder(str(source), image_size=h, channels=c, resize=False) if source.is_dir()
            else ArrayFile(str(source), image_size=h, channels=c, key="input"))
    images = data.load()
    if len(images) == 0:
        raise UdmError(f"input {source} holds no images")
    if not bool(torch.isfinite(images).all()):
        raise UdmError(f"input {source} holds NaN or infinite values; restore images of finite pixels")
    if images.dim() != 4 or list(images.shape[1:]) != shape:
        raise UdmError(f"input {source} holds images of shape {list(images.shape[1:])}; this checkpoint needs {shape}")
    if images.min() < -1 - 1e-6 or images.max() > 1 + 1e-6:
        raise UdmError(f"input {source} must lie in [-1, 1] (or be uint8 pixels); got [{images.min():.3g}, {images.max():.3g}]")
    return images


def sample_images(cfg: DictConfig) -> dict[str, Any]:
    if cfg.n < 1:
        raise UdmError(f"n must be a positive number of samples, got {cfg.n}")
    if not cfg.get("input") and (cfg.get("input_t") is not None or cfg.get("degrade_input")):
        raise UdmError("input_t and degrade_input apply to restoring your images: give input=FILE_OR_FOLDER with them")
    if cfg.get("input") and "n" in command_line_keys():
        raise UdmError("n does not apply when restoring input=...: every image of the input is restored")
    if cfg.get("out_dir"):
        check_output_folder(cfg.out_dir)
    asked = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("process", "net") if cfg.get(k)}
    model = open_model(cfg.ckpt, cfg.device, expect=("image", "points"), check=asked, progress=cfg.progress)
    cfg = with_student_sampler(cfg, model.recipe, chosen_keys())  # a distilled student's own sampler by default
    folder = check_output_folder(cfg.out_dir or model.run_dir / "samples")
    process, device = model.process, model.device
    if cfg.get("prior_noise") is not None:
        if not isinstance(process, Cold):  # x_T = D_T(x0) + prior_noise z is cold diffusion's prior
            raise UdmError(f"prior_noise applies to cold processes; this checkpoint's is {process.describe()}")
        process.prior_noise = float(cfg.prior_noise)
    fast = instantiate(cfg.fast)  # the net's wrapper, for autoguidance's guide too
    # float32 net: Analytic-DPM's moments are exact
    sampler = with_guidance(model.sampler(cfg.sampler), cfg, model, lambda guide: fast(guide, device=device))
    labels = requested_labels(model, cfg, cfg.n)
    if labels is not None and cfg.get("input"):
        raise UdmError("restoring an input (input=...) is unconditional here; leave label / labels out")
    net = fast(model.net, device=device)

    generator = torch.Generator(device).manual_seed(cfg.seed)
    t_start = cfg.get("input_t") or None
    if cfg.get("input"):  # restoration: start from the user's (degraded) images at t_start
        t_start = t_start or process.T
        starts = load_input(cfg.input, model.shape).to(device)
        if cfg.degrade_input:
            t = torch.full((len(starts),), t_start, dtype=torch.long, device=device)
            starts = process(starts, t, process.sample_noise(starts, generator))
    else:
        starts = model.prior(cfg.n if labels is None else len(labels), generator, cfg.batch_size,
                             prior_labels(model, cfg, labels))
    chunks, start = [], time.perf_counter()
    for x_T, cond in batches(starts, labels, cfg.batch_size):
        chunks.append(sampler(process, net, x_T, generator=generator, progress=cfg.progress, t_start=t_start, cond=cond).cpu())
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)
    n = len(samples)

    steps = len(sampler.timesteps(process, t_start))
    stem = f"{cfg.sampler_name}-{steps}steps-n{n}-seed{cfg.seed}" + (f"-restored-t{t_start}" if cfg.get("input") else "")
    stem += describe_conditions(cfg)
    grid = torch.cat([starts.cpu(), samples]) if cfg.get("input") else samples  # inputs above, restorations below
    nrow = min(n, 16) if cfg.get("input") else cfg.n if cfg.get("labels") else None  # labels=all: one row per class
    png = model.save_samples(grid, fresh_path(folder, stem, ".png").with_suffix(""), nrow=nrow)
    tensor_path = fresh_path(folder, stem, ".pt")
    torch.save(samples, tensor_path)
    print(f"udm-sample: {n} samples in {seconds:.1f}s ({n / seconds:.1f}/s) with {cfg.sampler_name}, {steps} steps, "
          f"net in {describe_net(net)}")
    print(f"udm-sample: grid written to {png}")
    print(f"udm-sample: tensor [{', '.join(map(str, samples.shape))}] in [-1, 1] written to {tensor_path}")
    return {"png": str(png), "tensor": str(tensor_path), "seconds": seconds}
