"""The CIFAR-10 DDPM recipe's net on a GPU: udm against diffusers' UNet2DModel of the same size, in one run.

    python experiments/scaling/gpu.py                      # on a CUDA machine: every row, about 5 minutes
    python experiments/scaling/gpu.py --device cpu --quick # seconds: checks the script (the test suite runs it)

Both nets are DDPM's 35.7M-parameter CIFAR-10 U-Net (conf/experiment/cifar10_ddpm.yaml; diffusers:
block_out_channels 128, 256, 256, 256, attention in the second down block and the third up block, two layers per
block, GroupNorm 32, dropout 0.1): the same parameter count, 35,746,307. For each net and variant
* train: images/s of forward + MSE + backward + Adam on a fixed noisy batch (--batch, 128 as in DDPM), and the peak
  memory the step allocates (torch.cuda.max_memory_allocated);
* sample: images/s of DDIM-50 (eta 0) from the same x_T (--sample-batch), udm's loop against diffusers' scheduler
  loop, and its peak memory;
variants: fp32; bf16 autocast + channels_last ("fast"); fast + torch.compile; and for sampling, compile with
mode="reduce-overhead" (CUDA graphs for the fixed-shape loop). A compile that fails falls back to eager and says so.
Each rate is the median of --repeats timed rounds after warm-up (torch.cuda.synchronize around each).
FLOPs per image (one forward, one training step) are counted once with torch.utils.flop_counter.
It also times udm-train itself on the recipe (synthetic CIFAR-10 files; bf16-mixed, EMA, flips, Lightning's loop):
two run lengths (--train-steps, 100 and 400), whose difference cancels the start-up, on 1 GPU and, where the
machine has several, on all of them with trainer=ddp (batch 128 per GPU).
Everything goes to one JSON line at the end and to experiments/scaling/results-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from benchmark import DiffusersNet, net_flops  # noqa: E402  (FLOPs counted with SDPA's CPU kernels too)

T = 1000
FULL = dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, groups=32)
QUICK = dict(channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_resolutions=(16,), dropout=0.1, groups=8)
VARIANTS = {"fp32": dict(bf16=False, channels_last=False, compile=None),
            "fast": dict(bf16=True, channels_last=True, compile=None),
            "fast+compile": dict(bf16=True, channels_last=True, compile="default"),
            "fast+cudagraphs": dict(bf16=True, channels_last=True, compile="reduce-overhead")}


def udm_net(size: dict) -> nn.Module:
    from udm.nets import UNet

    return UNet(image_size=32, in_channels=3, **size)


def diffusers_net(size: dict) -> nn.Module:
    from diffusers import UNet2DModel

    widths = tuple(size["channels"] * m for m in size["channel_mult"])
    down = tuple("AttnDownBlock2D" if 32 // 2**i in size["attention_resolutions"] else "DownBlock2D" for i in range(len(widths)))
    return DiffusersNet(UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=size["num_res_blocks"], block_out_channels=widths,
        down_block_types=down, up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
        norm_num_groups=size["groups"], dropout=size["dropout"], attention_head_dim=None))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def peak_memory(fn, device: torch.device) -> float | None:
    """GiB the call allocates at its peak (CUDA); None on CPU."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def prepared(net: nn.Module, variant: dict) -> nn.Module:
    """The net as the variant runs it: NHWC weights, compiled where asked (a compile that fails is caught by the
    row, which reruns it eagerly and says so in its note)."""
    if variant["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    if variant["compile"] is None:
        return net
    return torch.compile(net, mode=variant["compile"])


def autocast(device: torch.device, variant: dict):
    return torch.autocast(device.type, dtype=torch.bfloat16) if variant["bf16"] else contextlib.nullcontext()


def inputs(batch: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    eps, t = torch.randn(x0.shape, generator=g), torch.randint(1, T + 1, (batch,), generator=g)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)[t - 1].float()[:, None, None, None]
    return {k: v.to(device) for k, v in {"x_t": abar.sqrt() * x0 + (1 - abar).sqrt() * eps, "t": t, "eps": eps}.items()}


def train_row(net: nn.Module, batch: dict, variant: dict, device: torch.device, args) -> dict:
    model = prepared(net, variant)
    x_t = batch["x_t"].contiguous(memory_format=torch.channels_last) if variant["channels_last"] else batch["x_t"]
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    net.train()

    def step():
        with autocast(device, variant):
            out = model(x_t, batch["t"])
        loss = F.mse_loss(out.float(), batch["eps"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        seconds = timed(step, device, args.warmup, args.repeats)
    except Exception as e:  # noqa: BLE001  (a compile that fails on this machine: eager instead, said in the row)
        if variant["compile"] is None:
            raise
        return {**train_row(net, batch, {**variant, "compile": None}, device, args), "note": f"compile failed: {e!s:.200}"}
    return {"images_per_s": len(x_t) / statistics.median(seconds), "seconds": seconds, "peak_gib": peak_memory(step, device), "note": ""}


def ddim(impl: str, model: nn.Module, x_T: Tensor, steps: int, device: torch.device, variant: dict):
    """sample() -> x_0 by DDIM-`steps`, eta 0: udm's loop or diffusers' DDIMScheduler loop (trailing spacing)."""
    if impl == "udm":
        from udm.processes import Gaussian
        from udm.samplers import DDIM

        process, sampler = Gaussian(T=T).to(device), DDIM(steps=steps, eta=0.0)

        def sample():
            with torch.no_grad(), autocast(device, variant):
                return sampler(process, model, x_T)

        return sample
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")

    def sample():
        scheduler.set_timesteps(steps, device=device)
        x = x_T
        with torch.no_grad(), autocast(device, variant):
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t.expand(len(x))), t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        return x

    return sample


def sample_row(impl: str, net: nn.Module, variant: dict, device: torch.device, args) -> dict:
    net.eval()
    model = prepared(net, variant)
    x_T = torch.randn(args.sample_batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    if variant["channels_last"]:
        x_T = x_T.contiguous(memory_format=torch.channels_last)
    sample = ddim(impl, model, x_T, args.steps, device, variant)
    try:
        seconds = timed(sample, device, max(1, args.warmup // 2), args.repeats)
    except Exception as e:  # noqa: BLE001
        if variant["compile"] is None:
            raise
        return {**sample_row(impl, net, {**variant, "compile": None}, device, args), "note": f"compile failed: {e!s:.200}"}
    return {"images_per_s": args.sample_batch / statistics.median(seconds), "seconds": seconds,
            "peak_gib": peak_memory(sample, device), "steps": args.steps, "note": ""}


def udm_train_seconds(experiment: str, steps: int, devices: int, data: Path, folder: Path) -> float:
    """Wall seconds of `udm-train experiment=... trainer.max_steps=steps` on `devices` GPUs (DDP when more than one),
    no validation and no final grid: start-up included, which the difference of two lengths cancels."""
    run = folder / f"{experiment}-{devices}gpu-{steps}steps"
    cmd = [str(Path(sys.executable).parent / "udm-train"), f"experiment={experiment}", f"data.path={data}",
           f"hydra.run.dir={run}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
           "trainer.limit_val_batches=0", "final_samples=0", "val_samples=0", "~callbacks.progress"]
    if devices > 1:
        cmd += ["trainer=ddp", f"trainer.devices={devices}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"udm-train failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    return time.perf_counter() - start


def udm_train_rows(experiment: str, lengths: tuple[int, int], gpus: int, batch: int) -> list[dict]:
    """images/s of udm-train itself (Lightning, the recipe's precision, EMA, flips, checkpointing) on synthetic CIFAR-10
    files: (long - short) steps x global batch / (seconds(long) - seconds(short)), on 1 GPU and on all of them."""
    from tests.cifar_files import write_cifar

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data, _, _ = write_cifar(Path(tmp), per_batch=1024)
        for devices in sorted({1, gpus}):
            short, long = (udm_train_seconds(experiment, n, devices, data, Path(tmp)) for n in lengths)
            images = (lengths[1] - lengths[0]) * batch * devices
            rows.append({"task": "udm-train", "impl": "udm", "variant": experiment, "devices": devices,
                         "global_batch": batch * devices, "images_per_s": images / (long - short),
                         "seconds": [short, long], "steps": list(lengths)})
            print(f"udm-train {experiment} on {devices} device(s): {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    return rows


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a small net, tiny batches, 2 steps: checks the script")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train-steps", default="100,400", help="udm-train run lengths to difference; 0: skip")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    experiment = "cifar10_ddpm"
    if args.quick:
        args.batch, args.sample_batch, args.steps, args.warmup, args.repeats = 2, 2, 2, 1, 1
        experiment, args.train_steps = "cifar10_ddpm_smoke", ("2,4" if args.train_steps != "0" else "0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: this torch has no CUDA device; run with --device cpu --quick to check the script")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # fp32 rows: TF32 matmuls and convs ("tf32" in the JSON)
    size = QUICK if args.quick else FULL
    torch.manual_seed(0)
    nets = {"udm": udm_net(size), "diffusers": diffusers_net(size)}
    result = {"host": socket.gethostname(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "gpus": torch.cuda.device_count(), "batch": args.batch, "sample_batch": args.sample_batch,
              "tf32": device.type == "cuda", "size": size,
              "params": {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()},
              "flops_per_image": {k: net_flops(n, inputs(2, torch.device("cpu"))) for k, n in nets.items()}, "rows": []}
    batch = inputs(args.batch, device)
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        for impl, net in nets.items():
            net = copy.deepcopy(net).to(device)
            if name != "fast+cudagraphs":  # CUDA graphs pay off in the fixed-shape sampling loop; training rows: compile
                row = train_row(net, batch, variant, device, args)
                result["rows"].append({"task": "train", "impl": impl, "variant": name, **row})
                print(f"train  {impl:9s} {name:16s} {row['images_per_s']:10.1f} images/s  peak {row['peak_gib']} GiB {row['note']}", flush=True)
            row = sample_row(impl, copy.deepcopy(net), variant, device, args)
            result["rows"].append({"task": "sample", "impl": impl, "variant": name, **row})
            print(f"sample {impl:9s} {name:16s} {row['images_per_s']:10.1f} images/s  peak {row['peak_gib']} GiB {row['note']}", flush=True)
    if args.train_steps != "0":
        lengths = tuple(int(n) for n in args.train_steps.split(","))
        recipe_batch = 16 if args.quick else 128  # the experiment's data.batch_size per device
        result["rows"] += udm_train_rows(experiment, lengths, max(1, result["gpus"]) if device.type == "cuda" else 1, recipe_batch)
    line = json.dumps(result)
    print(line)
    if not args.no_write:
        out = ROOT / "experiments" / "scaling" / f"results-{socket.gethostname()}-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(line + "\n")
        print(f"gpu.py: written to {out}")
    return result


if __name__ == "__main__":
    main()
