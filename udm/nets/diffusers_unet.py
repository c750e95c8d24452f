"""A pretrained diffusers UNet2DModel as udm's x0-predictor backbone (udm.diffusers_folder reads its folder).

The UNet predicts what its scheduler's prediction_type says (eps, v or x0); the process built from the same
folder gives that output its meaning, as for every udm net. Only the time input differs: diffusers' timestep k
indexes alphas_cumprod[k] = alphabar_{k+1}, so udm's t (1..T; real-valued between grid points on continuous grids)
reaches the UNet as k = t - 1.
"""

from __future__ import annotations

from torch import Tensor, nn

from udm.diffusers_folder import unet_config, unet_folder
from udm.errors import UdmError
from udm.nets.conditioning import refuse_condition


class DiffusersUNet(nn.Module):
    """net(x_t [B, C, H, W], t [B], cond=None) -> the UNet's .sample at diffusers timestep t - 1.

    path: a pipeline folder (its unet/) or a UNet folder, with config.json and diffusion_pytorch_model.safetensors.
    """

    # sampled as it is: udm-train would train it under the command line's process, not the one its scheduler names
    trainable = False

    def __init__(self, path: str):
        super().__init__()
        try:
            from diffusers import UNet2DModel
            from diffusers.utils import is_accelerate_available
        except ImportError:
            raise UdmError("a diffusers UNet needs the diffusers package: pip install diffusers") from None

        folder = unet_folder(path)
        if folder is None:
            raise UdmError(f"path={path!r} holds no diffusers UNet (looked for unet/config.json and config.json)")
        self.integer_time = unet_config(folder).get("time_embedding_type") == "learned"  # an embedding table of k
        self.unet = UNet2DModel.from_pretrained(str(folder), use_safetensors=True,
                                                low_cpu_mem_usage=is_accelerate_available())  # (no advice to install it)

    def forward(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        refuse_condition(self, cond)
        if self.integer_time and t.is_floating_point():
            raise UdmError("this UNet's learned time embedding takes whole timesteps only; use a grid of integer "
                           "times (grid=uniform or solver_time)")
        return self.unet(x, t - 1).sample
