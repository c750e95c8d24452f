"""The fast path for sampling: the network runs in bfloat16, NHWC and/or compiled; the process stays float32.

Only the network call changes: x_t arrives in float32, the net sees it in its fast form, and
its output goes back to float32 before the process forms x0_hat and the next x_t, so the
reverse loop's arithmetic (the coefficients a_t, b_t, the noise, the sums over steps) is the
plain path's. Precisions follow Lightning's names:

    32-true     float32 throughout (the plain path)
    bf16-mixed  torch.autocast to bfloat16: matmuls and convolutions in bf16, norms and softmax in fp32
    bf16-true   weights cast to bfloat16 once (under autocast, for float32 tensors made inside the net)
    auto        bf16-mixed where the device has fast bf16 (CUDA with bf16 support, or a CPU whose oneDNN
                reports native bf16: AVX512-BF16 / AMX), else 32-true

`channels_last='auto'` is NHWC for float32 nets on CPU and off otherwise. Measured on a 2-core AMD EPYC
(Zen 5) with DDIM, images/s: the README's MNIST U-Net 88 (fp32) / 116 (fp32 + NHWC) / 179 (bf16) / 109 (bf16 + NHWC);
the benchmark's 32x32 U-Net 4.6 / 5.5 / 8.0 / 8.3. NHWC helps oneDNN's fp32 convolutions and costs the small
net's bf16 ones more than it gives the larger net.
`compile=True` wraps the net in torch.compile; a compile that fails (no C++ compiler, an unsupported
op) prints one line and the net runs eagerly, so sampling never fails for it. `compile_mode` is torch.compile's
mode: default, reduce-overhead (CUDA graphs: the fixed-shape loop replays each step's kernels in one launch,
which pays where a step's many small kernels leave the GPU waiting on Python) or max-autotune.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import Tensor, nn

PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def check_compile_mode(compile: bool, mode: str, device: torch.device) -> None:
    """A compile mode is refused where it cannot apply: without compile, unknown, or CUDA graphs off CUDA."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile_mode {mode!r}; choose one of {list(COMPILE_MODES)}")
    if mode != "default" and not compile:
        raise ValueError(f"compile_mode={mode} applies to a compiled net; set compile=true (fast=compile) too")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(f"compile_mode=reduce-overhead records CUDA graphs, which need a CUDA device, not {device.type}")


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively (not emulated) on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve(precision: str, channels_last: bool | str, device: torch.device) -> tuple[str, bool]:
    """The concrete precision and memory format that `auto` stands for on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16-mixed" if bf16_is_fast(device) else "32-true"
    if channels_last == "auto":
        channels_last = device.type == "cpu" and precision == "32-true"
    elif not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be true, false or auto, got {channels_last!r}")
    return precision, channels_last


class FastNet(nn.Module):
    """`net(x_t, t)` in the chosen precision and memory format, returning float32 as the plain net does."""

    def __init__(self, net: nn.Module, device: torch.device | str = "cpu", precision: str = "auto",
                 channels_last: bool | str = "auto", compile: bool = False, compile_mode: str = "default"):
        super().__init__()
        self.device = torch.device(device)
        check_compile_mode(compile, compile_mode, self.device)
        self.precision, self.channels_last = resolve(precision, channels_last, self.device)
        if self.precision == "bf16-true" or self.channels_last:  # a converted copy: the caller's net stays as it was
            net = copy.deepcopy(net)
        if self.precision == "bf16-true":
            net = net.to(torch.bfloat16)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.compile_mode = compile_mode
        self.compiled = torch.compile(net, dynamic=False, mode=compile_mode) if compile else None

    def describe(self) -> str:
        compiled = [f"compiled ({self.compile_mode})" if self.compile_mode != "default" else "compiled"]
        parts = [self.precision] + (["channels_last"] if self.channels_last else []) + (compiled if self.compiled is not None else [])
        return ", ".join(parts)

    def autocast(self):
        if self.precision != "32-true":  # bf16-true too: ops on float32 made inside the net (time embeddings) meet bf16 weights
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, x_t: Tensor, t: Tensor, cond=None) -> Tensor:
        x = x_t
        if self.precision == "bf16-true" and x.is_floating_point():
            x = x.to(torch.bfloat16)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            out = self.run(x, t, cond)
        if self.compiled is not None and self.compile_mode == "reduce-overhead":
            out = out.clone()  # a CUDA graph's output buffer is overwritten by its next replay; samplers keep outputs
        return out.float() if out.is_floating_point() else out

    def run(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        args = (x, t) if cond is None else (x, t, cond)
        if self.compiled is None:
            return self.net(*args)
        try:
            return self.compiled(*args)
        except Exception as e:  # noqa: BLE001 - any compile failure: say so once, then run eagerly
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            print(f"udm: torch.compile failed ({reason}); continuing without it")
            self.compiled = None
            return self.net(*args)


def fast_net(net: nn.Module, device: torch.device | str = "cpu", precision: str = "auto", channels_last: bool | str = "auto",
             compile: bool = False, compile_mode: str = "default") -> nn.Module:
    """`net` itself on the plain path (32-true, NCHW, eager), else wrapped in a FastNet."""
    check_compile_mode(compile, compile_mode, torch.device(device))
    precision, channels_last = resolve(precision, channels_last, torch.device(device))
    if (precision, channels_last) == ("32-true", False) and not compile:
        return net
    return FastNet(net, device, precision, channels_last, compile, compile_mode)


def describe_net(model: nn.Module) -> str:
    """How the sampling net runs, for logs and result files: e.g. 'bf16-mixed, channels_last' or '32-true'."""
    return model.describe() if isinstance(model, FastNet) else "32-true"
