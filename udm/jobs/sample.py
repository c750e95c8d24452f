"""sample_images(cfg): checkpoint -> process + net -> the one sampling loop -> PNG grid + tensor file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from udm.checkpoint import build_from_checkpoint, check_compatible, find_checkpoint, load_checkpoint
from udm.errors import UdmError
from udm.grid import save_grid
from udm.lit import CHECKPOINT_KEY


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fresh_path(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem.suffix, or stem-1, stem-2, ... so nothing already there is overwritten."""
    path, i = folder / f"{stem}{suffix}", 0
    while path.exists():
        i += 1
        path = folder / f"{stem}-{i}{suffix}"
    return path


def reference_batch(recipe: dict[str, Any], n: int, needs_data: bool) -> torch.Tensor:
    """x0 references for the prior: held-out data when the prior depends on it, else zeros of the right shape."""
    if not needs_data:
        return torch.zeros(n, *recipe["shape"])
    data = instantiate(recipe["data"])
    data.setup("test")
    idx = torch.randint(0, len(data.test), (n,), generator=torch.Generator().manual_seed(0))
    return data.test[idx]


def sample_images(cfg: DictConfig) -> dict[str, Any]:
    if cfg.n < 1:
        raise UdmError(f"n must be a positive number of samples, got {cfg.n}")
    ckpt_path = find_checkpoint(cfg.ckpt)
    checkpoint = load_checkpoint(ckpt_path)
    recipe = checkpoint[CHECKPOINT_KEY]
    asked = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("process", "net") if cfg.get(k)}
    if asked:
        check_compatible(ckpt_path, recipe, asked, partial=True)
    process, net = build_from_checkpoint(checkpoint)
    device = pick_device(cfg.device)
    process.to(device), net.to(device)
    sampler = instantiate(cfg.sampler)

    generator = torch.Generator(device).manual_seed(cfg.seed)
    reference = reference_batch(recipe, cfg.n, getattr(process, "prior_needs_data", False)).to(device)
    chunks, start = [], time.perf_counter()
    for batch in reference.split(cfg.batch_size):
        x_T = process.prior(batch, generator)
        chunks.append(sampler(process, net, x_T, generator=generator, progress=cfg.progress).cpu())
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)

    folder = Path(cfg.out_dir) if cfg.get("out_dir") else ckpt_path.parent.parent / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    steps = cfg.sampler.get("steps") or process.T
    stem = f"{cfg.sampler_name}-{steps}steps-n{cfg.n}-seed{cfg.seed}"
    png = save_grid(samples, fresh_path(folder, stem, ".png"))
    tensor_path = fresh_path(folder, stem, ".pt")
    torch.save(samples, tensor_path)
    print(f"udm-sample: {cfg.n} samples in {seconds:.1f}s ({cfg.n / seconds:.1f}/s) with {cfg.sampler_name}, {steps} steps")
    print(f"udm-sample: grid written to {png}")
    print(f"udm-sample: tensor [{', '.join(map(str, samples.shape))}] in [-1, 1] written to {tensor_path}")
    return {"png": str(png), "tensor": str(tensor_path), "seconds": seconds}
