"""udm against diffusers on this machine: training, DDIM sampling, FLOP rates, memory, text generation.

    python experiments/benchmark.py                               # plain fp32 rows
    python experiments/benchmark.py --bf16 --channels-last        # plus a fast row per candidate
    python experiments/benchmark.py --quick --only text           # seconds; what the test runs

One process times every candidate on the same seeded inputs, interleaving them round by
round (udm, diffusers, udm, diffusers, ...) so that load from other jobs on a shared
machine hits both sides alike; each rate is the median over `--repeats` timed rounds after
`--warmup` untimed ones. The architecture is matched: udm.nets.UNet(image_size 32,
channels 32, channel_mult (1, 2, 2), num_res_blocks 2, attention at 16) and diffusers'
UNet2DModel(block_out_channels (32, 64, 64), layers_per_block 2, AttnDownBlock2D /
AttnUpBlock2D at 16x16) have the same layers and parameter count; diffusers is given udm's
GroupNorm groups (8) and attention head width (32) so that both do the same arithmetic.

* train: images/s of forward + MSE loss + backward + AdamW step on a fixed noisy batch.
* sample: images/s of DDIM with eta = 0, udm.samplers.DDIM(steps=50)(Gaussian(T=1000), net, x_T)
  against diffusers' DDIMScheduler loop (linear betas, clip_sample, "trailing" spacing, which
  visits the same 50 noise levels as udm's, and eps re-derived from the clipped x0 as udm's
  inverse step does), from the same x_T: given the same eps-model both loops return the
  same x_0 (tests/test_benchmark.py checks it).
* text: poems/s and tokens/s of udm's [MASK] generation (conf/experiment/quatrain_mask.yaml,
  random weights) at 1, 2 and 4 tokens per step, steps = ceil(length / tokens_per_step).
* FLOPs: one forward and one training step (forward + backward; AdamW's elementwise update
  is not counted) are counted once per architecture with torch.utils.flop_counter.
  FlopCounterMode, which has no formula for the CPU flash-attention kernel that SDPA picks
  for contiguous inputs: this script adds one (the same as for the CUDA kernels), so a
  net whose attention takes the math path (bmm, counted) and one whose attention takes the
  flash path are counted alike. Achieved GFLOP/s = FLOPs per image x images/s, shown beside
  the fp32 and bf16 matmul peaks (2048 x 2048, median of repeats) measured in the same run.
* memory: peak resident set size of each row, measured in a fresh subprocess of this script
  (`--worker`) that builds the same candidate and runs the same workload. ru_maxrss is the
  process's high-water mark and never goes down, so in one process the second candidate
  would report the first one's peak; the allocator also keeps freed pages, so a
  reset-the-counter approach in one process under-counts later candidates. A fresh process
  per row gives each its own mark, read from /proc/self/status (VmHWM: ru_maxrss is carried
  from the parent into a child across fork and exec on Linux, so it would report at least
  the parent's size); the row reports that peak (imports + model + workload)
  and the part above the mark reached once the model and inputs are built. The workers
  run 2 training steps, a 5-step sampling run (the no-grad loop's working set does not
  grow with the number of steps) and the full text generation.

`--bf16` (CPU autocast to bfloat16), `--channels-last` (NHWC weights and inputs) and
`--compile` (torch.compile; a failure falls back to eager with a message) apply to both
sides where they can and make one extra "fast" row per candidate. `--profile` adds
torch.profiler tables (top ops by self CPU time) of one training step and one sampling
step of each net. The table is printed with rich and everything is written to
experiments/benchmark/results-<host>-<date>.json (a new file each run).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "experiments" / "benchmark"
NOT_INSTALLED = "not installed (pip install -e '.[bench]')"
TASKS = ("train", "sample", "text")
TOKENS_PER_STEP = (1, 2, 4)
T_TRAIN = 1000  # diffusion steps of both Gaussian processes

# The matched architecture (the reference UNet2DModel, ~1.6M parameters).
IMAGE_SIZE, IN_CHANNELS, WIDTHS, LAYERS, ATTENTION_AT, GROUPS, HEAD_DIM = 32, 1, (32, 64, 64), 2, 16, 8, 32


@dataclass(frozen=True)
class Variant:
    """How a candidate runs: fp32 eager NCHW ("plain"), or with any of the fast-path switches."""

    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [n for n, on in (("bf16", self.bf16), ("channels_last", self.channels_last), ("compile", self.compile)) if on]
        return "+".join(parts) or "plain fp32"

    @property
    def fast(self) -> bool:
        return self.bf16 or self.channels_last or self.compile

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def images(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class Settings:
    batch: int
    repeats: int
    warmup: int
    train_iters: int  # training steps per timed round
    sample_steps: int
    matmul_size: int
    matmul_repeats: int
    text_batch: int


def settings(args: argparse.Namespace) -> Settings:
    quick = Settings(batch=8, repeats=1, warmup=1, train_iters=1, sample_steps=3, matmul_size=512, matmul_repeats=3, text_batch=4)
    full = Settings(batch=64, repeats=3, warmup=1, train_iters=3, sample_steps=50, matmul_size=2048, matmul_repeats=7, text_batch=64)
    s = quick if args.quick else full
    if args.repeats is not None:
        s.repeats = args.repeats
    if args.warmup is not None:
        s.warmup = args.warmup
    if args.batch is not None:
        s.batch = s.text_batch = args.batch
    if min(s.repeats, s.batch) < 1 or s.warmup < 0:
        raise SystemExit("--repeats and --batch must be >= 1 and --warmup >= 0")
    return s


# ---------------------------------------------------------------- the candidates


def load_diffusers():
    """The diffusers module, or None where it is not installed (the benchmark then skips its rows)."""
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers


def udm_unet() -> nn.Module:
    from udm.nets import UNet

    return UNet(image_size=IMAGE_SIZE, in_channels=IN_CHANNELS, channels=WIDTHS[0], channel_mult=tuple(w // WIDTHS[0] for w in WIDTHS),
                num_res_blocks=LAYERS, attention_resolutions=(ATTENTION_AT,), groups=GROUPS, patch_size=1)


def diffusers_unet(diffusers) -> nn.Module:
    down = tuple("AttnDownBlock2D" if IMAGE_SIZE // 2**i == ATTENTION_AT else "DownBlock2D" for i in range(len(WIDTHS)))
    return diffusers.UNet2DModel(
        sample_size=IMAGE_SIZE, in_channels=IN_CHANNELS, out_channels=IN_CHANNELS, layers_per_block=LAYERS,
        block_out_channels=WIDTHS, down_block_types=down, up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
        norm_num_groups=GROUPS, attention_head_dim=HEAD_DIM,
    )


class DiffusersNet(nn.Module):
    """net(x_t, t) -> tensor, as udm's nets are called; diffusers' UNet2DModel returns an output object."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t, return_dict=False)[0]


def build_net(impl: str, seed: int = 0) -> nn.Module | None:
    torch.manual_seed(seed)
    if impl == "udm":
        return udm_unet()
    diffusers = load_diffusers()
    return None if diffusers is None else DiffusersNet(diffusers_unet(diffusers))


def prepare(net: nn.Module, variant: Variant) -> nn.Module:
    """The net as a variant runs it: NHWC weights for channels_last, wrapped by torch.compile for compile."""
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return torch.compile(net) if variant.compile else net


def image_inputs(batch: int, seed: int = 0) -> dict[str, Tensor]:
    """One fixed noisy training batch (x_t, t, eps) and one sampling start x_T, shared by every candidate."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.randint(1, T_TRAIN + 1, (batch,), generator=g)
    alphabar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T_TRAIN, dtype=torch.float64), 0)[t - 1].float()[:, None, None, None]
    x_t = alphabar.sqrt() * x0 + (1 - alphabar).sqrt() * eps
    return {"x_t": x_t, "t": t, "eps": eps, "x_T": torch.randn(x0.shape, generator=g)}


def train_step(net: nn.Module, inputs: dict[str, Tensor], variant: Variant) -> Callable[[], None]:
    model = prepare(net, variant)
    x_t, t, eps = variant.images(inputs["x_t"]), inputs["t"], inputs["eps"]
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    net.train()

    def step():
        with variant.autocast():
            out = model(x_t, t)
        loss = F.mse_loss(out.float(), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ddim_sampler(impl: str, net: nn.Module, x_T: Tensor, variant: Variant) -> Callable[[int], Tensor]:
    """sample(steps) -> x_0 by DDIM (eta = 0) with udm's one loop or diffusers' scheduler loop."""
    model = prepare(net, variant)
    x_T = variant.images(x_T)
    net.eval()
    if impl == "udm":
        from udm.processes import Gaussian
        from udm.samplers import DDIM

        process = Gaussian(T=T_TRAIN)

        def sample(steps: int) -> Tensor:
            with variant.autocast():
                return DDIM(steps=steps, eta=0.0)(process, model, x_T)

        return sample

    scheduler = load_diffusers().DDIMScheduler(num_train_timesteps=T_TRAIN, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                               clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")

    @torch.no_grad()
    def sample(steps: int) -> Tensor:
        scheduler.set_timesteps(steps)
        x = x_T
        with variant.autocast():
            for t in scheduler.timesteps:
                x = scheduler.step(model(x, t), t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        return x

    return sample


def text_model(batch: int):
    """(process, net, x_T, sampler) of conf/experiment/quatrain_mask.yaml with random weights, x_T = all [MASK]."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from udm.cli import CONF_DIR
    from udm.jobs.train import fill_from_data

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=quatrain_mask"])
    data = instantiate(cfg.data)
    data.setup("fit")
    fill_from_data(cfg.process, data.derived, "process")
    fill_from_data(cfg.net, data.derived, "net")
    torch.manual_seed(0)
    process, net = instantiate(cfg.process), instantiate(cfg.net).eval()
    x_T = process.prior(torch.zeros(batch, process.length, dtype=torch.long), torch.Generator().manual_seed(0))
    return process, net, x_T, cfg.sampler


def text_generator(process, net: nn.Module, x_T: Tensor, sampler_cfg, tokens_per_step: int, variant: Variant) -> Callable[[], Tensor]:
    from hydra.utils import instantiate

    sampler = instantiate(sampler_cfg, steps=math.ceil(process.length / tokens_per_step))
    model = torch.compile(net) if variant.compile else net

    def generate() -> Tensor:
        with variant.autocast():
            return sampler(process, model, x_T, generator=torch.Generator().manual_seed(0))

    return generate


# ---------------------------------------------------------------- measuring


def matmul_peak(n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of an n x n matmul in `dtype`, median over repeats after one warm-up."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    torch.mm(a, b)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds) / 1e9


def _flash_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _flash_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode that also counts SDPA's CPU flash kernels (the math path is counted as bmm already)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _flash_cpu
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _flash_cpu_backward
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn: Callable[[], Any]) -> int:
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def net_flops(net: nn.Module, inputs: dict[str, Tensor]) -> dict[str, float]:
    """FLOPs per image of one forward (no grad) and one training step (forward + backward) of a fresh copy of net."""
    net = copy.deepcopy(net)
    x_t, t, batch = inputs["x_t"], inputs["t"], inputs["x_t"].shape[0]
    with torch.no_grad():
        forward = count_flops(lambda: net(x_t, t))
    step = count_flops(lambda: F.mse_loss(net(x_t, t), inputs["eps"]).backward())
    return {"forward": forward / batch, "train_step": step / batch}


@dataclass
class Candidate:
    """One row to time: `warm()` runs untimed (compiling if asked), `run()` is one timed unit of `items` images or poems."""

    key: str
    warm: Callable[[], Any]
    run: Callable[[], Any]
    items: int
    rebuild_eager: Callable[[], Candidate] | None = None  # for a compile that fails
    note: str = ""


def time_interleaved(candidates: list[Candidate], warmup: int, repeats: int, console: Console) -> dict[str, list[float]]:
    """Seconds per run of each candidate, one round over all candidates per repeat."""
    for i, c in enumerate(candidates):
        for _ in range(max(warmup, 1 if c.rebuild_eager else 0)):
            try:
                c.warm()
            except Exception as e:  # noqa: BLE001 - any compile failure falls back to eager
                if c.rebuild_eager is None:
                    raise
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                console.print(f"[yellow]torch.compile failed for {c.key} ({msg}); timing it eager instead[/yellow]")
                c = candidates[i] = c.rebuild_eager()
                c.note = f"compile failed ({msg}); eager"
                c.warm()
                break
    seconds: dict[str, list[float]] = {c.key: [] for c in candidates}
    for _ in range(repeats):
        for c in candidates:
            start = time.perf_counter()
            c.run()
            seconds[c.key].append(time.perf_counter() - start)
    return seconds


def peak_rss_mib() -> float:
    """This address space's RSS high-water mark (VmHWM). ru_maxrss would not do in a worker: Linux carries the
    parent's mark into a child across fork and exec, so every worker would report at least the parent's size."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(spec: dict[str, Any]) -> dict[str, float]:
    """Build one row's candidate in this fresh process, run its workload, report the RSS high-water marks."""
    variant = Variant(**spec["variant"])
    if spec["task"] == "text":
        process, net, x_T, sampler_cfg = text_model(spec["batch"])
        run = text_generator(process, net, x_T, sampler_cfg, spec["tokens_per_step"], variant)
        work = [run]
    else:
        net, inputs = build_net(spec["impl"]), image_inputs(spec["batch"])
        if spec["task"] == "train":
            step = train_step(net, inputs, variant)
            work = [step, step]
        else:
            sample = ddim_sampler(spec["impl"], net, inputs["x_T"], variant)
            work = [lambda: sample(min(5, spec["steps"]))]
    built = peak_rss_mib()
    for fn in work:
        fn()
    peak = peak_rss_mib()
    return {"peak_rss_mib": round(peak, 1), "workload_rss_mib": round(peak - built, 1)}


def measure_memory(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"memory_error": f"worker failed ({proc.returncode}): {tail[:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the three tasks


def row(task: str, impl: str, variant: Variant, **fields) -> dict[str, Any]:
    return {"task": task, "impl": impl, "variant": variant.name, "variant_flags": asdict(variant), "status": "ok", **fields}


def missing_row(task: str, variant: Variant) -> dict[str, Any]:
    return {**row(task, "diffusers", variant), "status": NOT_INSTALLED}


def image_task(task: str, s: Settings, variants: list[Variant], console: Console) -> tuple[list[dict], dict]:
    """Rows of `task` (train or sample) for udm and diffusers in every variant, timed interleaved."""
    inputs = image_inputs(s.batch)
    nets = {impl: build_net(impl) for impl in ("udm", "diffusers")}
    info: dict[str, Any] = {"params": {impl: sum(p.numel() for p in n.parameters()) if n is not None else None for impl, n in nets.items()}}
    info["flops_per_image"] = {impl: net_flops(n, inputs) for impl, n in nets.items() if n is not None}

    def make(impl: str, v: Variant) -> Candidate:
        net = copy.deepcopy(nets[impl])  # every row starts from the same weights
        key = f"{impl}/{v.name}"
        eager = (lambda: make(impl, Variant(v.bf16, v.channels_last, False))) if v.compile else None
        if task == "train":
            step = train_step(net, inputs, v)

            def run():
                for _ in range(s.train_iters):
                    step()

            return Candidate(key, step, run, s.batch * s.train_iters, eager)
        sample = ddim_sampler(impl, net, inputs["x_T"], v)
        return Candidate(key, lambda: sample(2), lambda: sample(s.sample_steps), s.batch, eager)

    if task == "sample":
        info["loop_overhead_ms_per_step"] = {impl: loop_overhead(impl, inputs["x_T"], s) for impl, n in nets.items() if n is not None}
    candidates = [make(impl, v) for v in variants for impl in ("udm", "diffusers") if nets[impl] is not None]
    console.print(f"[bold]{task}[/bold]: timing {', '.join(c.key for c in candidates)} "
                  f"({s.warmup} warm-up + {s.repeats} timed rounds, batch {s.batch})")
    seconds = time_interleaved(candidates, s.warmup, s.repeats, console)
    by_key = {c.key: c for c in candidates}
    rows = []
    for v in variants:
        for impl in ("udm", "diffusers"):
            if nets[impl] is None:
                rows.append(missing_row(task, v))
                continue
            c = by_key[f"{impl}/{v.name}"]
            secs = seconds[c.key]
            rate = c.items / statistics.median(secs)
            flops = info["flops_per_image"][impl]["train_step" if task == "train" else "forward"]
            flops *= 1 if task == "train" else s.sample_steps
            rows.append(row(task, impl, v, images_per_s=rate, seconds=secs, items_per_run=c.items,
                            gflop_per_image=flops / 1e9, achieved_gflops=flops * rate / 1e9, note=c.note,
                            **({"steps": s.sample_steps} if task == "sample" else {})))
    return rows, info


class NullNet(nn.Module):
    """A net that costs nothing: what is left of a sampling run is the loop's own work."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)


def loop_overhead(impl: str, x_T: Tensor, s: Settings) -> float:
    """Milliseconds per DDIM step that the sampling loop spends outside the net (median over rounds)."""
    sample = ddim_sampler(impl, NullNet(), x_T, Variant())
    sample(2)
    seconds = []
    for _ in range(max(s.repeats, 3)):
        start = time.perf_counter()
        sample(s.sample_steps)
        seconds.append(time.perf_counter() - start)
    return 1e3 * statistics.median(seconds) / s.sample_steps


def text_task(s: Settings, variants: list[Variant], console: Console) -> tuple[list[dict], dict]:
    """poems/s and tokens/s of [MASK] generation at 1, 2 and 4 tokens per step (bf16 / compile where asked)."""
    process, net, x_T, sampler_cfg = text_model(s.text_batch)
    text_variants = [Variant(v.bf16, False, v.compile) for v in variants]
    text_variants = [v for i, v in enumerate(text_variants) if v not in text_variants[:i]]  # channels_last has no text analogue
    with torch.no_grad():
        forward = count_flops(lambda: net(x_T, torch.full((s.text_batch,), process.T)))
    info = {"params": sum(p.numel() for p in net.parameters()), "length": process.length, "vocab_size": process.vocab_size,
            "flops_per_poem_step": forward / s.text_batch, "net": type(net).__name__}

    def make(v: Variant, tps: int) -> Candidate:
        gen = text_generator(process, net, x_T, sampler_cfg, tps, v)
        eager = (lambda: make(Variant(v.bf16, False, False), tps)) if v.compile else None
        return Candidate(f"udm/{v.name}/{tps}", gen, gen, s.text_batch, eager)

    candidates = [make(v, tps) for v in text_variants for tps in TOKENS_PER_STEP]
    console.print(f"[bold]text[/bold]: timing {len(candidates)} settings ({s.warmup} warm-up + {s.repeats} timed rounds, batch {s.text_batch})")
    seconds = time_interleaved(candidates, s.warmup, s.repeats, console)
    rows = []
    for c in candidates:
        v = next(v for v in text_variants if c.key.startswith(f"udm/{v.name}/"))
        tps = int(c.key.rsplit("/", 1)[1])
        steps = math.ceil(process.length / tps)
        rate = c.items / statistics.median(seconds[c.key])
        flops = info["flops_per_poem_step"] * steps
        rows.append(row("text", "udm", v, tokens_per_step=tps, steps=steps, poems_per_s=rate, tokens_per_s=rate * process.length,
                        seconds=seconds[c.key], items_per_run=c.items, gflop_per_image=flops / 1e9,
                        achieved_gflops=flops * rate / 1e9, note=c.note))
    return rows, info


def profile_tables(s: Settings, rows: int = 15) -> dict[str, str]:
    """torch.profiler top ops by self CPU time: one training step and one sampling step of each net (plain fp32)."""
    from torch.profiler import ProfilerActivity, profile

    inputs, plain, tables = image_inputs(s.batch), Variant(), {}
    for impl in ("udm", "diffusers"):
        net = build_net(impl)
        if net is None:
            continue
        step = train_step(copy.deepcopy(net), inputs, plain)
        sample = ddim_sampler(impl, copy.deepcopy(net), inputs["x_T"], plain)
        for name, fn in (("train_step", step), ("sampling_step", lambda: sample(1))):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            tables[f"{impl}/{name}"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables


# ---------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model)
    diffusers = load_diffusers()
    return {"host": socket.gethostname(), "cpu_model": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": getattr(diffusers, "__version__", None), "python": platform.python_version()}


def targets(rows: list[dict]) -> dict[str, Any]:
    """The issue's targets: sampling >= 1.5x diffusers; training >= 1.0x in fp32 and >= 1.3x with the fast path."""
    rate = {(r["task"], r["impl"], r["variant"]): r.get("images_per_s") for r in rows if r["task"] != "text"}
    fast = next((r["variant"] for r in rows if r["task"] == "train" and r["variant_flags"] != asdict(Variant())), None)
    plain = Variant().name

    def ratio(task, a, b):
        x, y = rate.get((task, "udm", a)), rate.get((task, "diffusers", b))
        return x / y if x and y else None

    out = {}
    for name, task, a, b, goal in [("sampling_plain_vs_plain", "sample", plain, plain, 1.5),
                                   ("training_fp32_vs_fp32", "train", plain, plain, 1.0),
                                   ("training_fast_vs_diffusers_fp32", "train", fast, plain, 1.3),
                                   ("training_fast_vs_diffusers_fast", "train", fast, fast, None),
                                   ("sampling_fast_vs_diffusers_fp32", "sample", fast, plain, None),
                                   ("sampling_fast_vs_diffusers_fast", "sample", fast, fast, None)]:
        r = ratio(task, a, b) if a else None
        if r is not None:
            out[name] = {"ratio": r, "goal": goal, "met": None if goal is None else r >= goal}
    return out


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def print_report(result: dict[str, Any], console: Console) -> None:
    peaks = result["peaks_gflops"]
    m = result["machine"]
    console.print(f"\n{m['cpu_model']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), diffusers "
                  f"{m['diffusers'] or 'not installed'}; load average {result['load_average_start']} at start, "
                  f"{result['load_average_end']} at end")
    console.print(f"matmul peaks ({result['settings']['matmul_size']}^2): fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    images = result.get("images", {})
    if images.get("params"):
        p = images["params"]
        ratio = f", ratio {p['udm'] / p['diffusers']:.3f}" if p.get("diffusers") else ""
        console.print(f"parameters: udm UNet {p['udm']:,}, diffusers UNet2DModel {fmt(p.get('diffusers'), 0) if p.get('diffusers') else NOT_INSTALLED}{ratio}")
    if images.get("loop_overhead_ms_per_step"):
        console.print("sampling loop outside the net (null net): " + ", ".join(
            f"{impl} {ms:.2f} ms/step" for impl, ms in images["loop_overhead_ms_per_step"].items()))
    table = Table(title="udm vs diffusers")
    for col in ("task", "impl", "variant", "rate", "tokens/s", "vs diffusers", "GFLOP/s", "% peak", "peak RSS MiB", "+RSS MiB", "note"):
        table.add_column(col, justify="left" if col in ("task", "impl", "variant", "note") else "right")
    rates = {(r["task"], r["variant"], r["impl"]): r.get("images_per_s") for r in result["rows"]}
    for r in result["rows"]:
        if r["status"] != "ok":
            table.add_row(r["task"], r["impl"], r["variant"], "-", "-", "-", "-", "-", "-", "-", r["status"])
            continue
        task = r["task"] if r["task"] != "text" else f"text {r['tokens_per_step']}/step"
        rate = f"{r['poems_per_s']:.1f} poems/s" if r["task"] == "text" else f"{r['images_per_s']:.2f} img/s"
        vs = "-"
        other = rates.get((r["task"], r["variant"], "diffusers"))
        if r["impl"] == "udm" and other:
            vs = f"{r['images_per_s'] / other:.2f}x"
        peak = peaks["bf16" if r["variant_flags"]["bf16"] else "fp32"]
        table.add_row(task, r["impl"], r["variant"], rate, fmt(r.get("tokens_per_s"), 0), vs, fmt(r["achieved_gflops"]),
                      f"{100 * r['achieved_gflops'] / peak:.1f}%", fmt(r.get("peak_rss_mib")), fmt(r.get("workload_rss_mib")),
                      r.get("note") or r.get("memory_error", ""))
    console.print(table)
    for name, t in result.get("targets", {}).items():
        goal = f" (goal >= {t['goal']}x: {'met' if t['met'] else 'NOT met'})" if t["goal"] else ""
        console.print(f"{name}: {t['ratio']:.2f}x{goal}")
    for name, text in result.get("profiles", {}).items():
        console.print(f"\n[bold]profile {name}[/bold] (top ops by self CPU time)\n{text}", markup=True, highlight=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="batch 8, 1 round, 3 DDIM steps, small matmuls: seconds, for the tests")
    p.add_argument("--repeats", type=int, help="timed rounds per candidate (default 3; quick 1)")
    p.add_argument("--warmup", type=int, help="untimed rounds per candidate before timing (default 1)")
    p.add_argument("--batch", type=int, help="batch size of every task (default 64; quick 8)")
    p.add_argument("--only", default=",".join(TASKS), help="comma-separated subset of train,sample,text")
    p.add_argument("--bf16", action="store_true", help="fast rows: autocast to bfloat16 on CPU")
    p.add_argument("--channels-last", action="store_true", help="fast rows: channels_last (NHWC) nets and inputs")
    p.add_argument("--compile", action="store_true", help="fast rows: torch.compile (falls back to eager with a message)")
    p.add_argument("--profile", action="store_true", help="add torch.profiler top-op tables of a training and a sampling step")
    p.add_argument("--no-memory", action="store_true", help="skip the per-row subprocesses that measure peak memory")
    p.add_argument("--out", type=Path, default=OUT_DIR, help=f"folder for the JSON (default {OUT_DIR.relative_to(ROOT)})")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown or not args.tasks:
        p.error(f"--only takes a comma-separated subset of {','.join(TASKS)}; got {args.only!r}")
    return args


def fresh_json(folder: Path) -> Path:
    from udm.jobs.sample import fresh_path

    folder.mkdir(parents=True, exist_ok=True)
    return fresh_path(folder, f"results-{socket.gethostname()}-{datetime.now():%Y%m%d-%H%M%S}", ".json")


def main(argv: list[str] | None = None, console: Console | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    s = settings(args)
    variants = [Variant()]
    fast = Variant(args.bf16, args.channels_last, args.compile)
    if fast.fast:
        variants.append(fast)
    result: dict[str, Any] = {"command": " ".join(["python", "experiments/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
                              "date": datetime.now().isoformat(timespec="seconds"), "machine": machine(),
                              "load_average_start": [round(x, 2) for x in os.getloadavg()], "settings": asdict(s)}
    console.print(f"load average {result['load_average_start']}; measuring matmul peaks")
    result["peaks_gflops"] = {name: matmul_peak(s.matmul_size, dtype, s.matmul_repeats) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rows: list[dict] = []
    for task in ("train", "sample"):
        if task in args.tasks:
            task_rows, info = image_task(task, s, variants, console)
            rows += task_rows
            result["images"] = info
    if "text" in args.tasks:
        text_rows, result["text"] = text_task(s, variants, console)
        rows += text_rows
    if not args.no_memory:
        for r in rows:
            if r["status"] == "ok":
                console.print(f"memory: {r['task']} {r['impl']} {r['variant']}" + (f" {r['tokens_per_step']}/step" if r["task"] == "text" else ""))
                r.update(measure_memory({"task": r["task"], "impl": r["impl"], "variant": r["variant_flags"], "batch": s.text_batch if r["task"] == "text" else s.batch,
                                         "steps": s.sample_steps, "tokens_per_step": r.get("tokens_per_step")}))
    result["rows"] = rows
    result["targets"] = targets(rows)
    if args.profile:
        console.print("profiling one training step and one sampling step per net")
        result["profiles"] = profile_tables(s)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_report(result, console)
    path = fresh_json(args.out)
    path.write_text(json.dumps(result, indent=2))
    console.print(f"benchmark: results written to {path}")
    result["json"] = str(path)
    return result


if __name__ == "__main__":
    main()
