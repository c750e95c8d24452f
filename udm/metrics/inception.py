"""The FID Inception-v3: the network behind the FID that papers report, as udm's own module.

It is the TensorFlow Inception graph of 2015-12-05 that the original FID code used, in PyTorch with the parameter
names of torch-fidelity's FeatureExtractorInceptionV3 (and pytorch-fid's), so that the standard weights file

    weights-inception-2015-12-05-6726825d.pth   (torch-fidelity, torchmetrics; pytorch-fid: pt_inception-2015-12-05-6726825d.pth)

loads into it with strict=True. The weights are read from a local file only, never downloaded: the path given as
inception_weights=PATH, else the torch hub cache where torchmetrics and torch-fidelity download it
($TORCH_HOME/hub/checkpoints/, by default ~/.cache/torch/hub/checkpoints/). Fetch it yourself from WEIGHTS_URL.

The input protocol, exactly: udm's images (floats in [-1, 1]) become the 8-bit values a saved PNG holds,
round((x + 1) * 127.5) after clipping, one channel repeated to three for grayscale (to_uint8); the network takes
those uint8 images [B, 3, H, W] as torch-fidelity's does, resizes them in float32 to 299 x 299 by TensorFlow 1.x's
bilinear resize (align_corners=False: output pixel i reads input position i * H / 299, no half-pixel offset, no
antialiasing; resize_like_tf1), maps [0, 255] to [-1, 1) by (x - 128) / 128, and returns the 2048 averages of the
last block's feature maps (pool3) in float32. The 1008-way classifier `fc` is kept only so the file loads strictly.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udm.errors import UdmError

WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_NAMES = ("weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity's and torchmetrics' download
                 "pt_inception-2015-12-05-6726825d.pth")       # pytorch-fid's
SIZE = 299  # the graph's input side
FEATURES = 2048  # pool3


def to_uint8(images: Tensor) -> Tensor:
    """[N, C, H, W] floats in [-1, 1] -> the uint8 [N, 3, H, W] a saved PNG holds (values outside are clipped);
    grayscale (C = 1) is repeated to three channels, as a viewer shows it."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise UdmError(f"the FID Inception-v3 reads float images [N, 1 or 3, H, W] in [-1, 1], got {images.dtype} "
                       f"{list(images.shape)}")
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def resize_like_tf1(x: Tensor, size: int = SIZE) -> Tensor:
    """Bilinear resize of float images [N, C, H, W] to size x size as TensorFlow 1.x's resize_bilinear with
    align_corners=False: output index i reads input position p = i * (in / out) (float32), interpolating between
    floor(p) and floor(p) + 1 (the last pixel repeats past the edge) with weight p - floor(p)."""

    def taps(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        position = torch.arange(size, dtype=torch.float32, device=x.device) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = position.floor().long()
        return lo, (lo + 1).clamp(max=n_in - 1), (position - lo).to(x.dtype)

    (top, bottom, dy), (left, right, dx) = taps(x.shape[2]), taps(x.shape[3])
    rows_top, rows_bottom = x.index_select(2, top), x.index_select(2, bottom)
    upper = rows_top.index_select(3, left) + (rows_top.index_select(3, right) - rows_top.index_select(3, left)) * dx
    lower = rows_bottom.index_select(3, left) + (rows_bottom.index_select(3, right) - rows_bottom.index_select(3, left)) * dx
    return upper + (lower - upper) * dy[:, None]


# -- the network ------------------------------------------------------------------------------------------------


def unit(c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = True) -> nn.Sequential:
    """The graph's one building unit: convolution without bias, batch norm (TF's eps 1e-3), ReLU. same: zero
    padding that keeps the size (TF's SAME at stride 1); else none (VALID)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kh // 2, kw // 2) if same else (0, 0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(c_in, c_out, (kh, kw), stride, padding, bias=False),
                                     bn=nn.BatchNorm2d(c_out, eps=1e-3), relu=nn.ReLU()))


def avg_pool(x: Tensor) -> Tensor:  # TF's SAME average pooling averages the pixels inside the image only
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def max_pool(x: Tensor) -> Tensor:  # the last block's pooling branch (a max pool in the TF graph, unlike the paper)
    return F.max_pool2d(x, 3, stride=1, padding=1)


def max_pool_down(x: Tensor) -> Tensor:  # the stride-2 reductions
    return F.max_pool2d(x, 3, stride=2)


class Mixed(nn.Module):
    """One Inception block: branches side by side, concatenated over channels.

    Each branch is a list of steps: a pooling function, a (name, unit) pair, or a tuple of such pairs that run
    side by side on the same input and concatenate (the last blocks' 1x3 / 3x1 pairs). Units are registered
    under their names, which are the weights file's.
    """

    def __init__(self, *branches: list):
        super().__init__()
        self.branches = []
        for branch in branches:
            steps = []
            for step in branch:
                if callable(step):
                    steps.append(step)
                    continue
                pairs = step if isinstance(step[0], tuple) else (step,)
                for name, module in pairs:
                    self.add_module(name, module)
                steps.append(tuple(name for name, _ in pairs))
            self.branches.append(steps)

    def forward(self, x: Tensor) -> Tensor:
        outputs = []
        for steps in self.branches:
            y = x
            for step in steps:
                if callable(step):
                    y = step(y)
                else:
                    y = torch.cat([self.get_submodule(name)(y) for name in step], 1)
            outputs.append(y)
        return torch.cat(outputs, 1)


def block_a(c: int, pool_channels: int) -> Mixed:  # 35 x 35: Mixed_5b-d
    return Mixed([("branch1x1", unit(c, 64, 1))],
                 [("branch5x5_1", unit(c, 48, 1)), ("branch5x5_2", unit(48, 64, 5))],
                 [("branch3x3dbl_1", unit(c, 64, 1)), ("branch3x3dbl_2", unit(64, 96, 3)), ("branch3x3dbl_3", unit(96, 96, 3))],
                 [avg_pool, ("branch_pool", unit(c, pool_channels, 1))])


def block_b(c: int) -> Mixed:  # 35 -> 17: Mixed_6a
    return Mixed([("branch3x3", unit(c, 384, 3, stride=2, same=False))],
                 [("branch3x3dbl_1", unit(c, 64, 1)), ("branch3x3dbl_2", unit(64, 96, 3)),
                  ("branch3x3dbl_3", unit(96, 96, 3, stride=2, same=False))],
                 [max_pool_down])


def block_c(c: int, c7: int) -> Mixed:  # 17 x 17, factorized 7x7: Mixed_6b-e
    return Mixed([("branch1x1", unit(c, 192, 1))],
                 [("branch7x7_1", unit(c, c7, 1)), ("branch7x7_2", unit(c7, c7, (1, 7))), ("branch7x7_3", unit(c7, 192, (7, 1)))],
                 [("branch7x7dbl_1", unit(c, c7, 1)), ("branch7x7dbl_2", unit(c7, c7, (7, 1))), ("branch7x7dbl_3", unit(c7, c7, (1, 7))),
                  ("branch7x7dbl_4", unit(c7, c7, (7, 1))), ("branch7x7dbl_5", unit(c7, 192, (1, 7)))],
                 [avg_pool, ("branch_pool", unit(c, 192, 1))])


def block_d(c: int) -> Mixed:  # 17 -> 8: Mixed_7a
    return Mixed([("branch3x3_1", unit(c, 192, 1)), ("branch3x3_2", unit(192, 320, 3, stride=2, same=False))],
                 [("branch7x7x3_1", unit(c, 192, 1)), ("branch7x7x3_2", unit(192, 192, (1, 7))),
                  ("branch7x7x3_3", unit(192, 192, (7, 1))), ("branch7x7x3_4", unit(192, 192, 3, stride=2, same=False))],
                 [max_pool_down])


def block_e(c: int, pool) -> Mixed:  # 8 x 8, expanded 3x3: Mixed_7b (average pool), Mixed_7c (max pool)
    return Mixed([("branch1x1", unit(c, 320, 1))],
                 [("branch3x3_1", unit(c, 384, 1)),
                  (("branch3x3_2a", unit(384, 384, (1, 3))), ("branch3x3_2b", unit(384, 384, (3, 1))))],
                 [("branch3x3dbl_1", unit(c, 448, 1)), ("branch3x3dbl_2", unit(448, 384, 3)),
                  (("branch3x3dbl_3a", unit(384, 384, (1, 3))), ("branch3x3dbl_3b", unit(384, 384, (3, 1))))],
                 [pool, ("branch_pool", unit(c, 192, 1))])


class FIDInceptionV3(nn.Module):
    """uint8 images [B, 3, H, W] -> pool3 features [B, 2048] (float32); always in eval mode, no gradients.
    `num_features` is what torchmetrics' FrechetInceptionDistance reads off a custom `feature` module."""

    num_features = FEATURES

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = unit(3, 32, 3, stride=2, same=False)  # 299 -> 149
        self.Conv2d_2a_3x3 = unit(32, 32, 3, same=False)  # -> 147
        self.Conv2d_2b_3x3 = unit(32, 64, 3)
        self.Conv2d_3b_1x1 = unit(64, 80, 1)  # after a max pool: 73
        self.Conv2d_4a_3x3 = unit(80, 192, 3, same=False)  # -> 71, then a max pool: 35
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = block_a(192, 32), block_a(256, 64), block_a(288, 64)
        self.Mixed_6a = block_b(288)
        self.Mixed_6b, self.Mixed_6c = block_c(768, 128), block_c(768, 160)
        self.Mixed_6d, self.Mixed_6e = block_c(768, 160), block_c(768, 192)
        self.Mixed_7a = block_d(768)
        self.Mixed_7b, self.Mixed_7c = block_e(1280, avg_pool), block_e(2048, max_pool)
        self.fc = nn.Linear(FEATURES, 1008)  # the graph's classifier: in the weights file, unused for FID
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise UdmError(f"the FID Inception-v3 reads uint8 images [B, 3, H, W] (udm.metrics.inception.to_uint8), "
                           f"got {images.dtype} {list(images.shape)}")
        x = (resize_like_tf1(images.float()) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool_down(x)))
        x = max_pool_down(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


# -- the weights file -------------------------------------------------------------------------------------------


def hub_checkpoints() -> Path:
    """Where torch hub (and with it torchmetrics, torch-fidelity, pytorch-fid) keeps downloaded weights:
    $TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weights file: `weights` when given, else the first standard name in the torch hub cache; one UdmError
    saying where to get it and where to put it when there is none (nothing is downloaded)."""
    fetch = f"fetch {WEIGHTS_URL} yourself (nothing is downloaded at run time)"
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UdmError(f"inception_weights={str(weights)!r}: there is no such file; it should be the FID "
                           f"Inception-v3 weights, {WEIGHTS_NAMES[0]}: {fetch} and give its path")
        return path
    folder = hub_checkpoints()
    for name in WEIGHTS_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise UdmError(f"fid_inception needs the FID Inception-v3 weights file, and {folder / WEIGHTS_NAMES[0]} does not exist "
                   f"(nor pytorch-fid's {WEIGHTS_NAMES[1]} beside it): {fetch} and put it there (TORCH_HOME moves that "
                   f"folder), or give its path with inception_weights=PATH")


def load_inception(path: str | os.PathLike) -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of the file at path (a state dict, read with weights_only=True,
    loaded strictly); a UdmError naming the file when it is not those weights."""
    path = Path(path)
    advice = f"it should be the FID Inception-v3 weights file ({WEIGHTS_NAMES[0]}, from {WEIGHTS_URL})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UdmError(f"cannot read {path} as a PyTorch state dict ({type(e).__name__}); {advice}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UdmError(f"{path} holds a {type(state).__name__}, not a state dict of tensors; {advice}")
    net = FIDInceptionV3()
    expected = net.state_dict()
    # files converted before BatchNorm counted its batches lack num_batches_tracked; load_state_dict fills it in
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    foreign = [k for k in state if k not in expected]
    misshapen = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or foreign or misshapen:
        found = "; ".join(f"{what} (e.g. {keys[0]})" for what, keys in (
            (f"{len(missing)} of the network's {len(expected)} tensors are missing", missing),
            (f"{len(foreign)} of the file's {len(state)} tensors are not the network's", foreign),
            (f"{len(misshapen)} have other shapes", misshapen)) if keys)
        raise UdmError(f"{path} is not the FID Inception-v3's weights: {found}; {advice}")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net
