"""The distillation experiment's tables and sample grids from the udm-eval JSON files and wall times of its runs.

    python experiments/distillation/table.py RUNS OUT

RUNS holds the teachers (teacher_flow, teacher_blur) and the students of run.sh (progressive_*, consistency_*); OUT
gets table.md and the grids (udm-sample n=64, seed 0, drawn here when missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from udm.grid import side_by_side

FAMILIES = {  # family: (teacher run, [(method, student run)])
    "flow": ("teacher_flow", [("progressive", "progressive_flow"), ("progressive", "progressive_flow_1"),
                              ("consistency", "consistency_flow")]),
    "blur": ("teacher_blur", [("progressive", "progressive_blur"), ("progressive", "progressive_blur_long"),
                              ("progressive", "progressive_blur_step"), ("progressive", "progressive_blur_cosine"),
                              ("progressive", "progressive_blur_factor4"), ("progressive", "progressive_blur_states"),
                              ("progressive", "progressive_blur_states2"), ("progressive", "progressive_blur_l1"),
                              ("progressive", "progressive_blur_from8"), ("progressive", "progressive_blur_power05"),
                              ("progressive", "progressive_blur_power06"), ("progressive", "progressive_blur_power05_8to4"),
                              ("progressive", "progressive_blur_power05_8to4_states"),
                              ("progressive", "progressive_blur_power05_8to4_states_long"),
                              ("progressive", "progressive_blur_power05_8to4_states_l1"),
                              ("progressive", "progressive_blur_power05_8to4_states_l1_long"),
                              ("consistency", "consistency_blur")]),
}


def evaluations(run: Path) -> list[dict]:
    """The run's FID evaluations, one per checkpoint, sampler and steps (a rerun's file does not count twice)."""
    seen, kept = set(), []
    for path in sorted((run / "eval").glob("*.json")) if (run / "eval").is_dir() else []:
        result = json.loads(path.read_text())
        key = (Path(result["ckpt"]).name, sampler_label(result), result["steps"], result["seed"])
        if "fid" in result and key not in seen:
            seen.add(key)
            kept.append(result)
    return kept


def sampler_label(result: dict) -> str:
    """The sampler's name, with its grid where that is not the uniform one (e.g. "improved, power 0.5")."""
    grid = result.get("sampler_grid", "uniform")
    if grid in (None, "uniform"):
        return result["sampler"]
    return f"{result['sampler']}, {grid} {result['sampler_power']}" if grid == "power" else f"{result['sampler']}, {grid}"


def minutes(run: Path) -> str:
    path = run / "wall_seconds"
    return f"{int(path.read_text()) / 60:.1f}" if path.is_file() else "-"


def trained_for(result: dict) -> str:
    """The steps a student was distilled for (its checkpoint's file name or recipe), '-' for a teacher."""
    name = Path(result["ckpt"]).name
    return name.removeprefix("student-").removesuffix("steps.ckpt") if name.startswith("student-") else "last round"


def rows(runs: Path, family: str) -> list[str]:
    teacher, students = FAMILIES[family]
    out = []
    for r in sorted(evaluations(runs / teacher), key=lambda r: (-r["steps"], r["seed"])):
        out.append(f"| teacher ({sampler_label(r)}) | {r['nfe_per_sample']:.0f} | {r['seed']} | **{r['fid']:.2f}** | | "
                   f"{r['global_step']} training steps |")
    for method, run in students:
        for r in sorted(evaluations(runs / run), key=lambda r: (-r["steps"], r["seed"])):
            note = f"distilled for {trained_for(r)} steps" if trained_for(r) != "last round" else ""
            out.append(f"| {method} ({run}) | {r['nfe_per_sample']:.0f} | {r['seed']} | **{r['fid']:.2f}** | "
                       f"{minutes(runs / run)} | {note} |")
    return out


def grid(runs: Path, ckpt: str, *overrides: str) -> Path:
    """The 64-sample grid of `ckpt` (a run folder or checkpoint under RUNS) with `overrides`, drawn once."""
    args = [f"ckpt={runs / ckpt}", "n=64", "progress=false", *overrides]
    tag = "-".join(o.split("=", 1)[1] for o in overrides) or "own"
    target = runs / "grids" / f"{ckpt.replace('/', '_')}-{tag}"
    if not target.is_dir():
        subprocess.run(["udm-sample", *args, f"out_dir={target}"], check=True)
    return next(target.glob("*.png"))


def main(runs: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = ["# Distillation on MNIST: FID against network evaluations", "",
            "n = 500 samples per FID (udm's MNIST feature extractor). Minutes: the distillation's wall time on 2 CPU cores.",
            ""]
    for family in FAMILIES:
        text += [f"## {family}", "", "| model (run) | NFE | seed | FID | distillation minutes | note |", "|---|---|---|---|---|---|",
                 *rows(runs, family), ""]
    (out / "table.md").write_text("\n".join(text))
    print("\n".join(text))
    flow = {"teacher, Euler 1000": grid(runs, "teacher_flow", "sampler=euler", "sampler.steps=1000"),
            "teacher, Euler 2": grid(runs, "teacher_flow", "sampler=euler", "sampler.steps=2"),
            "progressive, 2": grid(runs, "progressive_flow/checkpoints/student-2steps.ckpt"),
            "consistency, 2": grid(runs, "consistency_flow", "sampler.steps=2"),
            "progressive, 1": grid(runs, "progressive_flow_1"),
            "consistency, 1": grid(runs, "consistency_flow", "sampler.steps=1")}
    side_by_side(flow, out / "samples_flow.png")
    blur = {"teacher, improved 50": grid(runs, "teacher_blur", "sampler=improved", "sampler.steps=50"),
            "teacher, improved 4": grid(runs, "teacher_blur", "sampler=improved", "sampler.steps=4"),
            "teacher, improved 4 (power 0.5)": grid(runs, "teacher_blur", "sampler=improved", "sampler.steps=4",
                                                    "sampler.grid=power", "sampler.power=0.5"),
            "progressive, 4": grid(runs, "progressive_blur/checkpoints/student-4steps.ckpt"),
            "progressive, 4 (teacher states)": grid(runs, "progressive_blur_states2"),
            "progressive, 4 (16 -> 4 in one round)": grid(runs, "progressive_blur_factor4"),
            "progressive, 4 (distill_mnist_blur_power)": grid(runs, "progressive_blur_power05_8to4_states_l1_long"),
            "consistency, 4": grid(runs, "consistency_blur", "sampler.steps=4")}
    side_by_side(blur, out / "samples_blur.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
