"""Same checkpoint + same seed -> the same samples before and after the sampler redesign, bit for bit.

Every case runs a console script (udm-sample / udm-generate) once with the baseline tree (a git worktree
of --before, default ebe9cc9) and once with the tree under test (--after-tree, default this repository),
on a checkpoint trained once by the BASELINE's udm-train (so old checkpoints must open in the new code),
with fast=plain (float32, eager) on the CPU. The .pt tensors are compared with torch.equal, the .txt
texts exactly. A failing case is recorded (its last stderr line), never fatal.

    OMP_NUM_THREADS=1 python experiments/core_v2_regression/run.py [--before REV] [--cache DIR]
        [--only SUBSTRING] [--after-tree PATH | --after REV] [--list]

Prints a Markdown table, writes it to experiments/core_v2_regression/results.md and ends with
"N of M cases bit-identical"; exit code 0 only when all are.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENTRY = "import sys; from udm.cli import {fn}; sys.argv[0] = {name!r}; {fn}()"
SCRIPTS = {"udm-train": "train_main", "udm-sample": "sample_main", "udm-generate": "generate_main"}

# --- checkpoints: trained once by the baseline's udm-train, tiny budgets -----------------------------------------

TINY = ["val_samples=0", "final_samples=0", "trainer.accelerator=cpu", "trainer.limit_val_batches=1",
        "callbacks.progress=null", "logger.tensorboard=null"]


def budget(steps: int) -> list[str]:
    return [f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}"]


# digits_smoke's 16-channel U-Net on 8x8 digits; 200 steps at lr 1e-3 with a short EMA so that samples are not
# saturated / all alike (an untrained net's samples sit at +-1 after clipping, which would hide small differences)
DIGITS = ["experiment=digits_smoke", "optimizer.lr=1e-3", "callbacks.ema.decay=0.95", *budget(200)]
CHECKPOINTS: dict[str, list[str]] = {
    "gauss": [*DIGITS, "process=gaussian"],
    "ve": ["experiment=toy_smld", *budget(100)],
    "blur": [*DIGITS, "process=blur", "sampler=improved"],
    "blur_noisy": [*DIGITS, "process=blur", "process.sigma=0.05", "sampler=improved"],
    "inpaint": [*DIGITS, "process=inpaint", "process.image_size=8", "sampler=improved"],
    "pixelate": [*DIGITS, "process=pixelate", "process.image_size=8", "sampler=improved"],
    "latent": ["experiment=mnist_latent", "net.channels=16", "process.encoder.channels=8", *budget(20)],
    "token_mask": ["experiment=quatrain_mask", "net.hidden=32", "net.layers=1", "net.heads=2", *budget(40)],
    "token_replace": ["experiment=quatrain_replace", "net.hidden=32", "net.layers=1", "net.heads=2", *budget(40)],
    "latent_tokens": ["experiment=quatrain_latent", "net.hidden=32", "net.layers=1", "net.heads=2", *budget(40)],
}


# --- cases -------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    ckpt: str
    overrides: list[str]
    script: str = "udm-sample"
    needs_input: bool = False  # restoration: input=<8x8 digits .pt> is added


C = Case
CASES: list[Case] = [
    # Gaussian VP (DDPM, linear schedule, eps) on 8x8 digits
    C("gauss/ddpm", "gauss", ["sampler=ddpm"]),
    C("gauss/ddpm_beta", "gauss", ["sampler=ddpm_beta"]),
    C("gauss/ddim", "gauss", ["sampler=ddim"]),
    C("gauss/ddim_eta0.5", "gauss", ["sampler=ddim", "sampler.eta=0.5"]),
    C("gauss/ddim_10", "gauss", ["sampler=ddim", "sampler.steps=10"]),
    C("gauss/ddim_eta0.5_batches", "gauss", ["sampler=ddim", "sampler.eta=0.5", "sampler.steps=20", "batch_size=3"]),
    C("gauss/analytic_ddpm_20", "gauss", ["sampler=analytic_ddpm", "sampler.steps=20"]),
    C("gauss/analytic_ddim_10", "gauss", ["sampler=analytic_ddim", "sampler.steps=10"]),
    C("gauss/dpm_solver_10", "gauss", ["sampler=dpm_solver", "sampler.steps=10"]),
    C("gauss/pc_50", "gauss", ["sampler=pc", "sampler.steps=50"]),
    C("gauss/improved_20", "gauss", ["sampler=improved", "sampler.steps=20"]),
    C("gauss/langevin_20", "gauss", ["sampler=langevin", "sampler.steps=20"]),
    C("gauss/restore_ddim", "gauss", ["sampler=ddim", "sampler.steps=10", "degrade_input=true", "input_t=500"],
      needs_input=True),
    # variance exploding (SMLD) on 2-D points, MLP
    C("ve/ddpm", "ve", ["sampler=ddpm"]),
    C("ve/pc", "ve", ["sampler=pc"]),
    C("ve/langevin_20", "ve", ["sampler=langevin", "sampler.steps=20"]),
    C("ve/ddim_20", "ve", ["sampler=ddim", "sampler.steps=20"]),
    C("ve/dpm_solver_10", "ve", ["sampler=dpm_solver", "sampler.steps=10"]),
    # cold diffusion on 8x8 digits
    C("blur/improved", "blur", ["sampler=improved"]),
    C("blur/naive", "blur", ["sampler=naive"]),
    C("blur/dpm_solver_10", "blur", ["sampler=dpm_solver", "sampler.steps=10"]),
    C("blur/improved_prior_noise", "blur", ["sampler=improved", "prior_noise=0.05"]),
    C("blur/restore_t25", "blur", ["sampler=improved", "degrade_input=true", "input_t=25"], needs_input=True),
    C("blur_noisy/ddpm", "blur_noisy", ["sampler=ddpm"]),
    C("blur_noisy/ddim_eta0.5", "blur_noisy", ["sampler=ddim", "sampler.steps=50", "sampler.eta=0.5"]),
    C("blur_noisy/improved", "blur_noisy", ["sampler=improved"]),
    C("inpaint/improved", "inpaint", ["sampler=improved"]),
    C("inpaint/naive", "inpaint", ["sampler=naive"]),
    C("pixelate/improved", "pixelate", ["sampler=improved"]),
    C("pixelate/naive", "pixelate", ["sampler=naive"]),
    # the encoding (latent) model on 28x28 MNIST
    C("latent/ddim_20", "latent", ["sampler=ddim", "sampler.steps=20"]),
    C("latent/ddpm_50", "latent", ["sampler=ddpm", "sampler.steps=50"]),
    C("latent/pc_20", "latent", ["sampler=pc", "sampler.steps=20"]),
    C("latent/analytic_ddim_10", "latent", ["sampler=analytic_ddim", "sampler.steps=10"]),
    # text through udm-generate
    *(C(f"{p}/tps{k}", p, [f"tokens_per_step={k}"], "udm-generate")
      for p in ("token_mask", "token_replace") for k in (1, 4)),
    *(C(f"{p}/confidence", p, ["tokens_per_step=1", "order=confidence"], "udm-generate")
      for p in ("token_mask", "token_replace")),
    C("token_mask/argmax_tps4", "token_mask", ["tokens_per_step=4", "temperature=0"], "udm-generate"),
    C("token_replace/infill", "token_replace", ["template='朝辭白帝彩雲間，＿＿＿＿＿＿＿。兩岸猿聲啼不住，＿＿＿＿＿＿＿。'"], "udm-generate"),
    C("token_mask/naive_tps2", "token_mask", ["tokens_per_step=2", "sampler=naive"], "udm-generate"),
    # text through Gaussian diffusion of embeddings; at temperature 1 the decoder draws from the same generator
    # as the sampler, so this case also checks that the random stream is unchanged (DDIM draws z at eta = 0 too)
    C("latent_tokens/ddim_10", "latent_tokens", ["sampler=ddim", "sampler.steps=10"], "udm-generate"),
    C("latent_tokens/ddim_10_temperature1", "latent_tokens", ["sampler=ddim", "sampler.steps=10", "temperature=1.0"], "udm-generate"),
    C("latent_tokens/ddpm_20_temperature1", "latent_tokens", ["sampler=ddpm", "sampler.steps=20", "temperature=1.0"], "udm-generate"),
]
del C

COMMON = {"udm-sample": ["n=8", "seed=0", "fast=plain", "device=cpu", "progress=false"],
          "udm-generate": ["n=8", "seed=0", "fast=plain", "device=cpu", "progress=false", "metrics=false", "show=0"]}
SUFFIX = {"udm-sample": ".pt", "udm-generate": ".txt"}
WRITTEN = {"udm-sample": re.compile(r"tensor .* written to (.+\.pt)\s*$", re.M),
           "udm-generate": re.compile(r"texts written to (.+\.txt)\s*$", re.M)}


# --- running a tree's console script -----------------------------------------------------------------------------

def tree_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(tree), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HYDRA_FULL_ERROR="1",
               CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def run_script(tree: Path, script: str, overrides: list[str], cwd: Path, log: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", ENTRY.format(fn=SCRIPTS[script], name=script), *overrides]
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(cmd, env=tree_env(tree), cwd=cwd, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ PYTHONPATH={tree} {script} {' '.join(overrides)}\n# rc {proc.returncode}\n"
                   f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n")
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def check_import(tree: Path, fatal: bool) -> None:
    """The udm that PYTHONPATH=tree really imports (the venv's editable install must not win)."""
    code = ("import importlib.util, sys; print(importlib.util.find_spec('udm').origin, flush=True); "
            "import udm.cli; print(udm.cli.CONF_DIR)")
    out = subprocess.run([sys.executable, "-c", code], env=tree_env(tree), capture_output=True, text=True, cwd=tempfile.gettempdir())
    lines = out.stdout.splitlines()
    if not lines:
        sys.exit(f"cannot locate udm with PYTHONPATH={tree}: {last_line(out.stderr)}")
    print(f"  PYTHONPATH={tree}: udm.__file__ = {lines[0]}" + (f"  (configs: {lines[1]})" if len(lines) > 1 else ""))
    if not Path(lines[0]).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"PYTHONPATH={tree} imports udm from {lines[0]}, not from that tree")
    if out.returncode:
        message = f"import udm.cli fails in {tree}: {last_line(out.stderr)}"
        if fatal:
            sys.exit(message)
        print(f"  WARNING: {message} (every case will record the error)")


# --- the baseline worktree and its checkpoints -------------------------------------------------------------------

def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def worktree(rev: str, cache: Path, prefix: str) -> tuple[Path, str]:
    """A detached git worktree of rev under cache (reused when it is a clean checkout of it)."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    path = cache / f"{prefix}-{sha[:7]}"
    if path.is_dir():
        try:
            if git("rev-parse", "HEAD", cwd=path) == sha and not git("status", "--porcelain", "--untracked-files=no", cwd=path):
                return path, sha
        except subprocess.CalledProcessError:
            pass
        print(f"  {path} is not a clean worktree of {sha[:7]}: making it again")
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
        git("worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", str(path), sha)
    print(f"  made worktree {path} at {sha[:7]}")
    return path, sha


def checkpoint(name: str, before: Path, sha: str, cache: Path) -> tuple[Path | None, str]:
    """checkpoints/last.ckpt of a tiny run by the baseline's udm-train (cached by rev and overrides)."""
    overrides = [*CHECKPOINTS[name], *TINY]
    key = hashlib.sha1("\n".join([sha, *overrides]).encode()).hexdigest()[:8]
    run_dir = cache / f"ckpt-{sha[:7]}" / f"{name}-{key}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return ckpt, "cached"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = run_script(before, "udm-train", [*overrides, f"hydra.run.dir={run_dir}"], cache / "train-cwd",
                      cache / "logs" / f"train-{name}-{key}.log")
    if proc.returncode or not ckpt.is_file():
        return None, f"training failed (rc {proc.returncode}): {last_line(proc.stderr or proc.stdout)}"
    return ckpt, f"trained in {time.perf_counter() - start:.0f}s"


def digits_input(path: Path) -> Path:
    """16 clean held-out-style 8x8 digits in [-1, 1] for the restoration cases (deterministic)."""
    if not path.is_file():
        import torch
        from sklearn.datasets import load_digits

        images = torch.tensor(load_digits().images[:8], dtype=torch.float32)[:, None] / 16 * 2 - 1
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images, path)
    return path


# --- one case, both trees ----------------------------------------------------------------------------------------

def side_ckpt(ckpt: Path, work: Path, side: str, name: str) -> Path:
    """A per-side copy (same mtime): caches written beside it (Analytic-DPM's moments) stay per tree and per run."""
    copy = work / side / "ckpt" / name / "checkpoints" / "last.ckpt"
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ckpt, copy)
    return copy


def run_side(case: Case, tree: Path, side: str, ckpt: Path, work: Path, extra: list[str]) -> tuple[Path | None, str, float]:
    slug = case.name.replace("/", "__")
    out_dir = work / side / "out" / slug
    shutil.rmtree(out_dir, ignore_errors=True)
    overrides = [f"ckpt={side_ckpt(ckpt, work, side, case.ckpt)}", *COMMON[case.script], *case.overrides, *extra,
                 f"out_dir={out_dir}"]
    start = time.perf_counter()
    proc = run_script(tree, case.script, overrides, work / side / "cwd", work / "logs" / f"{slug}.{side}.log")
    seconds = time.perf_counter() - start
    if proc.returncode:
        return None, f"error (rc {proc.returncode}): {last_line(proc.stderr)}", seconds
    found = WRITTEN[case.script].search(proc.stdout)
    if found and Path(found.group(1)).is_file():
        return Path(found.group(1)), "", seconds
    files = sorted(out_dir.glob(f"*{SUFFIX[case.script]}"))  # the message may change; the one file written
    if len(files) == 1:
        return files[0], "", seconds
    return None, f"no {SUFFIX[case.script]} output found (rc 0; {len(files)} in {out_dir})", seconds


def weak(samples: list) -> str:
    """A note when a case cannot show much: all samples alike (e.g. an undertrained net's constant output)."""
    distinct = len({repr(x) for x in samples})
    return f"; weak: {distinct} distinct of {len(samples)}" if distinct <= len(samples) // 2 else ""


def compare(case: Case, a: Path, b: Path) -> tuple[bool, str]:
    if case.script == "udm-generate":
        ta, tb = a.read_text(encoding="utf-8").splitlines(), b.read_text(encoding="utf-8").splitlines()
        if ta == tb:
            return True, f"identical ({len(ta)} texts{weak(ta)})"
        differ = sum(x != y for x, y in zip(ta, tb)) + abs(len(ta) - len(tb))
        return False, f"texts differ: {differ} of {max(len(ta), len(tb))}"
    import torch

    xa, xb = torch.load(a, map_location="cpu", weights_only=True), torch.load(b, map_location="cpu", weights_only=True)
    if xa.shape != xb.shape or xa.dtype != xb.dtype:
        return False, f"shape/dtype differ: {list(xa.shape)} {xa.dtype} vs {list(xb.shape)} {xb.dtype}"
    if torch.equal(xa, xb):
        saturated = (xa.abs() >= 1).float().mean().item()
        note = weak([row.flatten().tolist() for row in xa]) + (f"; weak: {saturated:.0%} at +-1" if saturated > 0.9 else "")
        return True, f"identical ({'x'.join(map(str, xa.shape))}{note})"
    diff = (xa.double() - xb.double()).abs()
    nan = (xa.isnan() != xb.isnan()).sum().item()
    return False, f"max abs diff {diff.nan_to_num(0).max().item():.3g} ({(diff != 0).sum().item()} of {diff.numel()} differ" + \
        (f", {nan} NaN mismatches" if nan else "") + ")"


# --- main --------------------------------------------------------------------------------------------------------

def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="ebe9cc9", help="baseline revision (default ebe9cc9)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "udm-regression",
                        help="worktree, checkpoints and outputs (default $TMPDIR/udm-regression)")
    parser.add_argument("--only", action="append", default=[], help="run only cases whose name or overrides contain this (repeatable)")
    parser.add_argument("--after-tree", type=Path, default=REPO, help="the tree under test (default: this repository, "
                        "uncommitted changes included)")
    parser.add_argument("--after", metavar="REV", help="test a committed revision instead (a worktree of it in the cache)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()

    def selected(case: Case) -> bool:
        text = " ".join([case.name, case.ckpt, case.script, *case.overrides])
        return not args.only or any(s in text for s in args.only)

    cases = [c for c in CASES if selected(c)]
    if args.list:
        for c in cases:
            print(f"{c.name:30s} {c.script} {' '.join(c.overrides)}")
        return 0
    if not cases:
        sys.exit(f"no case matches {args.only}")
    t0 = time.perf_counter()
    cache = args.cache.resolve()
    print(f"cache: {cache}")
    before, sha = worktree(args.before, cache, "before")
    after = worktree(args.after, cache, "after")[0] if args.after else args.after_tree.resolve()
    print("trees:")
    check_import(before, fatal=True)
    check_import(after, fatal=False)
    try:
        after_rev = git("rev-parse", "--short", "HEAD", cwd=after)
        dirty = git("status", "--porcelain", "--untracked-files=no", cwd=after)
        after_desc = f"{after} at {after_rev}" + (" + uncommitted changes" if dirty else "")
    except subprocess.CalledProcessError:
        after_desc = str(after)

    print("checkpoints (baseline udm-train):")
    ckpts: dict[str, tuple[Path | None, str]] = {}
    for name in dict.fromkeys(c.ckpt for c in cases):
        ckpts[name] = checkpoint(name, before, sha, cache)
        print(f"  {name:14s} {ckpts[name][1]}" + (f": {ckpts[name][0]}" if ckpts[name][0] else ""))

    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)  # fresh outputs and checkpoint copies (no moment caches) every run
    input_file = digits_input(cache / "digits8.pt") if any(c.needs_input for c in cases) else None

    rows, identical = [], 0
    for case in cases:
        ckpt, note = ckpts[case.ckpt]
        extra = [f"input={input_file}"] if case.needs_input else []
        command = f"{case.script} " + " ".join([*case.overrides, *extra]).replace(str(cache), "$CACHE")
        if ckpt is None:
            result, ok, secs = f"no checkpoint: {note}", False, "-"
        else:
            a, err_a, sa = run_side(case, before, "before", ckpt, work, extra)
            b, err_b, sb = run_side(case, after, "after", ckpt, work, extra)
            secs = f"{sa:.0f} / {sb:.0f}"
            if err_a or err_b:
                ok = False
                result = "; ".join(x for x in (err_a and f"before: {err_a}", err_b and f"after: {err_b}") if x)
            else:
                ok, result = compare(case, a, b)
        identical += ok
        rows.append((case.name, command, result, secs))
        print(f"{'OK  ' if ok else 'FAIL'} {case.name:30s} {secs:>9s}s  {result}", flush=True)

    minutes = (time.perf_counter() - t0) / 60
    table = ["| case | command overrides | result | seconds (before / after) |", "|---|---|---|---|"]
    table += [f"| {n} | `{cell(c)}` | {cell(r)} | {s} |" for n, c, r, s in rows]
    summary = f"{identical} of {len(rows)} cases bit-identical"
    header = [
        "# core_v2 regression: samples before vs after",
        "",
        f"* before: `{args.before}` = {sha[:10]} (worktree {before}); checkpoints trained by its udm-train",
        f"* after: {after_desc}",
        f"* every case also has `{' '.join(COMMON['udm-sample'])}` (udm-generate adds `metrics=false show=0`), "
        f"`ckpt=` a per-tree copy of the checkpoint, `out_dir=` per tree",
        f"* checkpoints: " + "; ".join(f"{k} = `{' '.join(CHECKPOINTS[k])}`" for k in ckpts),
        f"* run took {minutes:.1f} min" + (f" (--only {' '.join(args.only)})" if args.only else ""),
        "",
    ]
    text = "\n".join([*header, *table, "", summary, ""])
    print()
    print("\n".join([*table, "", summary]))
    (HERE / "results.md").write_text(text, encoding="utf-8")
    print(f"(written to {HERE / 'results.md'}; logs in {work / 'logs'}; {minutes:.1f} min)")
    return 0 if identical == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
