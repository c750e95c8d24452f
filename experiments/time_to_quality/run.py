"""Time to quality: udm's default MNIST recipe against the diffusers reference recipe, same wall clock.

    python experiments/time_to_quality/run.py                       # 10 minutes each, then FID at every snapshot
    python experiments/time_to_quality/run.py --minutes 4 --n 250   # a quicker look
    python experiments/time_to_quality/run.py --out runs/ttq/X --only eval,steps,report   # resume a cut-short run

Phases (all by default, in this order; each one reads what the earlier ones wrote under --out):

- udm:        `udm-train experiment=mnist` (the README's model: v/cosine U-Net, 2x2 patches, AdamW 1e-3, EMA)
              with `trainer.max_time` = the budget and a ModelCheckpoint every minute of training
              (`train_time_interval`); each snapshot carries Lightning's Timer state, whose elapsed
              training time is the x axis.
- diffusers:  the reference recipe of diffusers' train_unconditional example on the same digits
              (zero-padded to 32x32): UNet2DModel (32, 64, 64), two layers per block, attention at 16x16,
              DDPMScheduler (1000 linear betas, eps prediction), AdamW lr 1e-4 (betas 0.95/0.999,
              weight decay 1e-6) with 500 warm-up steps, gradient clipping 1.0, diffusers' EMAModel
              (power 3/4, max decay 0.9999), batch 64; its EMA weights saved every minute of the loop.
- eval:       FID (udm's MNIST feature extractor, all 500 held-out digits) of every snapshot with DDIM 50
              steps: udm's through `udm-eval`, diffusers' through its DDIMPipeline (samples cropped back
              to 28x28, scored by the same udm.metrics.fid function).
- steps:      FID against sampling steps for the last udm snapshot (DDPM 1000, DDIM 10/20/50,
              Analytic-DPM 10/20/50, DPM-Solver++(2M) 10/20) and for the last diffusers one (DDIM 10/20/50).
- report:     results.json, table.md and fid_vs_minutes.png under experiments/time_to_quality/results/
              (or --results).

Both trainings get the same torch thread count (--threads, default: all cores); run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("udm", "udm_fast", "diffusers", "eval", "steps", "report")
# udm's arms: the README's recipe as is, and the same with the training fast path (bf16 autocast, NHWC weights)
UDM_ARMS = {"udm": [], "udm_fast": ["trainer.precision=bf16-mixed", "channels_last=true"]}
PAD = 2  # 28 -> 32 pixels for the diffusers U-Net (three resolutions need a multiple of 4)


def log(msg: str) -> None:
    print(f"== {datetime.now():%H:%M:%S} {msg}", flush=True)


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# ---------------------------------------------------------------- training


def train_udm(out: Path, arm: str, minutes: float, every: float, threads: int) -> None:
    run = out / arm
    if (run / "checkpoints" / "last.ckpt").exists():
        log(f"udm: {run} already trained; skipping")
        return
    budget = f"00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}"
    cmd = [bin_path("udm-train"), "experiment=mnist", *UDM_ARMS[arm], "trainer.max_steps=-1", f"+trainer.max_time={budget}",
           f"hydra.run.dir={run}", "final_samples=64",
           "+callbacks.snapshots._target_=lightning.pytorch.callbacks.ModelCheckpoint",
           f"+callbacks.snapshots.dirpath={run}/snapshots", "+callbacks.snapshots.save_top_k=-1", "+callbacks.snapshots.auto_insert_metric_name=false",
           "+callbacks.snapshots.filename='snap-{step:06d}'",
           "+callbacks.snapshots.train_time_interval._target_=datetime.timedelta",
           f"+callbacks.snapshots.train_time_interval.seconds={round(every * 60)}"]
    log(f"udm: {' '.join(cmd)}")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def mnist(stage: str):
    """udm's MNIST data config and module, set up for `stage` (the same digits and split as experiment=mnist)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "udm" / "conf" / "data" / "mnist.yaml"), resolve=True)
    data = instantiate(data_cfg)
    data.setup(stage)
    return data_cfg, data


def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def train_diffusers(out: Path, minutes: float, every: float, threads: int, seed: int = 0, batch: int = 64) -> None:
    """The reference recipe in a plain loop, as diffusers' example writes it, stopped by the wall clock."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    run = out / "diffusers"
    if (run / "done").exists():
        log(f"diffusers: {run} already trained; skipping")
        return
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images = torch.nn.functional.pad(mnist("fit")[1].train, (PAD,) * 4, value=-1.0)  # background around the digits
    unet = diffusers_unet()
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=type(unet), model_config=unet.config)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_schedule = get_scheduler("constant_with_warmup", optimizer=optimizer, num_warmup_steps=500)
    n_params = sum(p.numel() for p in unet.parameters())
    log(f"diffusers: UNet2DModel {n_params / 1e6:.2f}M parameters, {len(images)} digits padded to 32x32, {minutes} min")
    g = torch.Generator().manual_seed(seed)
    order, pos, step, losses = torch.randperm(len(images), generator=g), 0, 0, []
    start = time.perf_counter()
    next_snapshot = every * 60
    unet.train()
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= next_snapshot or elapsed >= minutes * 60:
            recent_loss = sum(losses[-50:]) / max(len(losses[-50:]), 1)
            ema.store(unet.parameters()), ema.copy_to(unet.parameters())
            torch.save({"state_dict": unet.state_dict(), "elapsed": elapsed, "step": step, "loss": recent_loss},
                       run / f"snap-{step:06d}.pt")
            ema.restore(unet.parameters())
            log(f"diffusers: {elapsed / 60:.1f} min, step {step}, loss {recent_loss:.4f}")
            next_snapshot += every * 60
            if elapsed >= minutes * 60:
                break
        if pos + batch > len(images):
            order, pos = torch.randperm(len(images), generator=g), 0
        x0 = images[order[pos : pos + batch]]
        pos += batch
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step(), lr_schedule.step(), optimizer.zero_grad()
        ema.step(unet.parameters())
        losses.append(loss.item())
        step += 1
    (run / "done").write_text(f"{step} steps\n")


# ---------------------------------------------------------------- evaluation


def udm_snapshots(out: Path, arm: str = "udm") -> list[tuple[float, Path]]:
    found = []
    for path in sorted((out / arm / "snapshots").glob("snap-*.ckpt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        timer = next(v for k, v in ckpt["callbacks"].items() if "Timer" in k)
        found.append((timer["time_elapsed"]["train"], path))
    last = out / arm / "checkpoints" / "last.ckpt"
    if last.exists():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        timer = next((v for k, v in ckpt["callbacks"].items() if "Timer" in k), None)
        if timer is not None and all(abs(timer["time_elapsed"]["train"] - e) > 5 for e, _ in found):
            found.append((timer["time_elapsed"]["train"], last))
    return sorted(found)


def eval_udm(ckpt: Path, folder: Path, n: int, sampler: str, steps: int | None, threads: int) -> dict:
    existing = sorted(folder.glob(f"{sampler}-*.json")) if folder.exists() else []
    for path in existing:
        result = json.loads(path.read_text())
        if result.get("steps") == steps or steps is None:
            return result
    cmd = [bin_path("udm-eval"), f"ckpt='{ckpt}'", f"n={n}", "metrics=[fid]", f"sampler={sampler}", f"out_dir='{folder}'", "progress=false"]
    if steps is not None:
        cmd.append(f"sampler.steps={steps}")
    log(f"eval: {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=subprocess.DEVNULL)
    return json.loads(sorted(folder.glob(f"{sampler}-*.json"), key=lambda p: p.stat().st_mtime)[-1].read_text())


def eval_diffusers(snapshot: Path, n: int, steps: int, threads: int, seed: int = 0) -> dict:
    from diffusers import DDIMPipeline, DDIMScheduler

    from udm.jobs.features import ensure_extractor
    from udm.metrics.fid import frechet_distance
    from omegaconf import OmegaConf

    result_path = snapshot.with_name(f"{snapshot.stem}-ddim{steps}-n{n}.json")
    if result_path.exists():
        return json.loads(result_path.read_text())
    torch.set_num_threads(threads)
    data_cfg, data = mnist("test")
    payload = torch.load(snapshot, map_location="cpu", weights_only=True)
    unet = diffusers_unet()
    unet.load_state_dict(payload["state_dict"])
    unet.eval()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    start, chunks = time.perf_counter(), []
    for size in [250] * (n // 250) + ([n % 250] if n % 250 else []):
        images = pipe(batch_size=size, num_inference_steps=steps, eta=0.0, generator=generator, output_type="np").images
        chunks.append(torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, PAD:-PAD, PAD:-PAD] * 2 - 1)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)
    classifier, info = ensure_extractor(data_cfg, OmegaConf.load(ROOT / "udm" / "conf" / "extractor" / "classifier.yaml"), None,
                                        torch.device("cpu"), who="time_to_quality")
    from udm.grid import save_grid

    save_grid(samples[:64], snapshot.with_name(f"{snapshot.stem}-ddim{steps}.png"))
    result = {"fid": frechet_distance(data.test, samples, classifier), "n": n, "steps": steps, "sampler": "ddim (diffusers)",
              "seconds_per_sample": seconds / n, "fid_extractor": info["id"], "elapsed": payload["elapsed"],
              "train_step": payload["step"], "train_loss": payload["loss"]}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def at_marks(snapshots: list[tuple[float, Path]], marks: list[float]) -> list[tuple[float, Path]]:
    """The snapshot nearest to each mark (minutes of training), once each, marks with no snapshot within 30 s left out."""
    picked = []
    for mark in marks:
        elapsed, path = min(snapshots, key=lambda s: abs(s[0] - mark * 60))
        if abs(elapsed - mark * 60) <= 30 and (elapsed, path) not in picked:
            picked.append((elapsed, path))
    return picked


def diffusers_snapshots(out: Path) -> list[tuple[float, Path]]:
    return sorted((torch.load(p, map_location="cpu", weights_only=True)["elapsed"], p) for p in (out / "diffusers").glob("snap-*.pt"))


def eval_all(out: Path, n: int, marks: list[float], diffusers_marks: list[float], threads: int) -> dict:
    results = {arm: [] for arm in UDM_ARMS if (out / arm).exists()}
    for arm in results:
        for elapsed, ckpt in at_marks(udm_snapshots(out, arm), marks):
            r = eval_udm(ckpt, out / arm / "eval" / ckpt.stem, n, "ddim", 50, threads)
            results[arm].append({"minutes": elapsed / 60, "checkpoint": str(ckpt), "fid": r["fid"], "net": r.get("net", "32-true"),
                                 "seconds_per_sample": r.get("seconds_per_sample"), "samples": r.get("samples_file")})
            log(f"{arm:9} {elapsed / 60:5.2f} min  FID {r['fid']:.2f}")
    results["diffusers"] = []
    for elapsed, snapshot in at_marks(diffusers_snapshots(out), diffusers_marks):
        r = eval_diffusers(snapshot, n, 50, threads)
        results["diffusers"].append({"minutes": r["elapsed"] / 60, "checkpoint": str(snapshot), "fid": r["fid"],
                                     "seconds_per_sample": r["seconds_per_sample"], "train_step": r["train_step"]})
        log(f"diffusers {r['elapsed'] / 60:5.2f} min  FID {r['fid']:.2f}")
    (out / "fid_vs_minutes.json").write_text(json.dumps(results, indent=2))
    return results


STEP_SAMPLERS = [("ddpm", None), ("ddim", 10), ("ddim", 20), ("ddim", 50), ("analytic_ddpm", 10), ("analytic_ddpm", 20),
                 ("analytic_ddpm", 50), ("analytic_ddim", 10), ("analytic_ddim", 20), ("analytic_ddim", 50),
                 ("dpm_solver", 10), ("dpm_solver", 20)]


def eval_steps(out: Path, n: int, threads: int) -> dict:
    elapsed, ckpt = udm_snapshots(out)[-1]
    rows = []
    for sampler, steps in sorted(STEP_SAMPLERS, key=lambda s: s[1] or 1000):  # cheapest first
        r = eval_udm(ckpt, out / "udm" / "eval-steps" / f"{sampler}-{steps or 'all'}", n, sampler, steps, threads)
        rows.append({"impl": "udm", "sampler": sampler, "steps": r["steps"], "fid": r["fid"], "nfe": r.get("nfe_per_sample"),
                     "seconds_per_sample": r.get("seconds_per_sample")})
        log(f"udm {sampler} {r['steps']} steps: FID {r['fid']:.2f}")
    _, last = diffusers_snapshots(out)[-1]
    for steps in (10, 20, 50):
        r = eval_diffusers(last, n, steps, threads)
        rows.append({"impl": "diffusers", "sampler": "ddim", "steps": steps, "fid": r["fid"], "nfe": steps,
                     "seconds_per_sample": r["seconds_per_sample"]})
        log(f"diffusers ddim {steps} steps: FID {r['fid']:.2f}")
    result = {"udm_checkpoint": str(ckpt), "udm_minutes": elapsed / 60, "diffusers_checkpoint": str(last), "rows": rows}
    (out / "fid_vs_steps.json").write_text(json.dumps(result, indent=2))
    return result


# ---------------------------------------------------------------- report


def time_to_reach(curve: list[dict], target: float) -> float | None:
    return next((p["minutes"] for p in curve if p["fid"] <= target), None)


def report(out: Path, results_dir: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads((out / "fid_vs_minutes.json").read_text())
    steps = json.loads((out / "fid_vs_steps.json").read_text()) if (out / "fid_vs_steps.json").exists() else None
    results_dir.mkdir(parents=True, exist_ok=True)
    final = curves["diffusers"][-1]["fid"]
    lines = [f"# Time to quality ({args.minutes:g} min of training each, {args.threads} threads, n = {args.n}, DDIM 50 steps)", "",
             f"Last call: `{' '.join(sys.argv)}`; run folder `{out}`.", "",
             "| recipe | minutes of training | FID | sampled with |", "|---|---:|---:|---|"]
    for arm, curve in curves.items():
        for p in curve:
            lines.append(f"| {arm} | {p['minutes']:.1f} | {p['fid']:.1f} | {p.get('net', 'diffusers DDIMPipeline, float32')} |")
    lines.append("")
    for arm, curve in curves.items():
        if arm != "diffusers":
            reach = time_to_reach(curve, final)
            lines.append(f"diffusers' final FID {final:.1f}: {arm} reaches it after "
                         + (f"{reach:.1f} min ({reach / curves['diffusers'][-1]['minutes']:.0%} of diffusers' budget)." if reach is not None else "— (never)."))
    if steps:
        lines += ["", f"## FID against sampling steps (udm after {steps['udm_minutes']:.1f} min; diffusers final)", "",
                  "| model | sampler | steps (NFE) | FID | s/sample |", "|---|---|---:|---:|---:|"]
        for r in steps["rows"]:
            lines.append(f"| {r['impl']} | {r['sampler']} | {r['steps']} | {r['fid']:.1f} | {r['seconds_per_sample'] or 0:.3f} |")
    (results_dir / "table.md").write_text("\n".join(lines) + "\n")
    (results_dir / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "minutes": args.minutes, "n": args.n,
                                                          "threads": args.threads, "fid_vs_minutes": curves, "fid_vs_steps": steps}, indent=2))
    for arm, curve in curves.items():  # the last snapshot's DDIM-50 samples, to look at
        last = curve[-1]
        grid = Path(last["samples"]) if last.get("samples") else Path(last["checkpoint"]).with_name(Path(last["checkpoint"]).stem + "-ddim50.png")
        if grid.is_file():
            shutil.copyfile(grid, results_dir / f"samples_{arm}_{last['minutes']:.0f}min.png")
    fig, axes = plt.subplots(1, 2 if steps else 1, figsize=(10 if steps else 5, 4), squeeze=False)
    ax = axes[0][0]
    for name, curve in curves.items():
        ax.plot([p["minutes"] for p in curve], [p["fid"] for p in curve], "o-", label=name)
    ax.set(xlabel="minutes of training (2 CPU cores)", ylabel="FID (DDIM 50, udm MNIST features)", yscale="log", title="FID vs training time")
    ax.legend()
    if steps:
        ax = axes[0][1]
        for sampler in dict.fromkeys(r["sampler"] for r in steps["rows"] if r["impl"] == "udm"):
            pts = [(r["steps"], r["fid"]) for r in steps["rows"] if r["impl"] == "udm" and r["sampler"] == sampler]
            ax.plot(*zip(*pts), "o-", label=f"udm {sampler}")
        pts = [(r["steps"], r["fid"]) for r in steps["rows"] if r["impl"] == "diffusers"]
        ax.plot(*zip(*pts), "s--", label="diffusers ddim")
        ax.set(xlabel="sampling steps (NFE)", ylabel="FID", xscale="log", yscale="log", title="FID vs steps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results_dir / "fid_vs_minutes.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget of each recipe")
    p.add_argument("--every", type=float, default=1.0, help="minutes of training between snapshots")
    p.add_argument("--eval-at", default="1,2,3,5", help="minutes of training whose snapshots get an FID (the last one always)")
    p.add_argument("--diffusers-eval-at", default=None, help="the same for diffusers' snapshots (default: --eval-at); "
                   "its DDIM sampling is the slow part of the evaluation")
    p.add_argument("--n", type=int, default=500, help="samples per FID (500 = every held-out digit)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both recipes")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/time_to_quality/<now>)")
    p.add_argument("--results", type=Path, default=ROOT / "experiments" / "time_to_quality" / "results")
    p.add_argument("--only", default=",".join(ph for ph in PHASES if ph != "udm_fast"), help=f"comma-separated phases of {','.join(PHASES)}")
    args = p.parse_args(argv)
    phases = args.only.split(",")
    unknown = [ph for ph in phases if ph not in PHASES]
    if unknown:
        p.error(f"unknown phase(s) {unknown}; choose from {list(PHASES)}")
    out = (args.out or Path("runs") / "time_to_quality" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    log(f"run folder {out}; commit {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True, cwd=ROOT).stdout.strip()}")
    for arm in UDM_ARMS:
        if arm in phases:
            train_udm(out, arm, args.minutes, args.every, args.threads)
    if "diffusers" in phases:
        train_diffusers(out, args.minutes, args.every, args.threads)
    if "eval" in phases:
        marks = [float(m) for m in args.eval_at.split(",")] + [args.minutes]
        diffusers_marks = [float(m) for m in (args.diffusers_eval_at or args.eval_at).split(",")] + [args.minutes]
        eval_all(out, args.n, marks, diffusers_marks, args.threads)
    if "steps" in phases:
        eval_steps(out, args.n, args.threads)
    if "report" in phases:
        report(out, args.results, args)


if __name__ == "__main__":
    main()
