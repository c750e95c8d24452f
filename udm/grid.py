"""Sample grids as PNG files (no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> Tensor:
    """[N, C, H, W] in [-1, 1] -> one uint8 image [H', W', C] with a `pad`-pixel border."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = torch.zeros(c, pad + ncol * (h + pad), pad + nrow * (w + pad), dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = pixels[i]
    return grid.permute(1, 2, 0)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Write the grid as PNG, upscaled (nearest) so that small images stay visible."""
    from PIL import Image

    grid = make_grid(images, nrow).numpy()
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = scale or max(1, 64 // images.shape[-1])
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def as_grid_array(images: Tensor, nrow: int | None = None) -> np.ndarray:
    """The grid as [C, H, W] uint8, the layout TensorBoard's add_image expects."""
    return make_grid(images, nrow).permute(2, 0, 1).numpy()


def side_by_side(grids: dict[str, str | Path], path: str | Path) -> Path | None:
    """PNG grids in one row, each under its label (the keys); grids that are missing are left out. Returns the file
    written, or None when none of the grids exists."""
    from PIL import Image, ImageDraw

    found = {label: Image.open(p).convert("L") for label, p in grids.items() if Path(p).is_file()}
    if not found:
        return None
    width, height = max(im.width for im in found.values()), max(im.height for im in found.values())
    canvas = Image.new("L", (len(found) * (width + 8), height + 18), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (label, im) in enumerate(found.items()):
        draw.text((i * (width + 8) + 4, 2), label, fill=0)
        canvas.paste(im, (i * (width + 8), 18))
    canvas.save(path)
    return Path(path)
