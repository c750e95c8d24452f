"""compare(cfg): the udm-eval results of a sweep -> one Markdown table and PNG figures.

    udm-train -m process=gaussian,blur experiment=mnist_budget   # runs/multirun/<date>/<num>_<overrides>/
    udm-eval ckpt=<each run> ...                                  # <run>/eval/*.json (+ a PNG grid each)
    udm-compare runs/multirun/<date> [out_dir=...]

writes into the folder (or out_dir), never over an existing file (<name>-1, <name>-2, ...):

    <name>.md              one row per (run, eval): the run's swept settings (the keys of the
                           overrides it was trained with whose values differ between runs), the
                           eval's sampler and steps (and its other settings where they differ
                           between evals of one sampler), and the metrics udm-eval computed (a
                           column for each row of each metric's `table`, udm.metrics)
    <name>-samples.png     the scored sample grid of each run side by side (its best-FID eval)
    <name>-fid-steps.png   FID against sampling steps and against seconds per sample, one line
                           per run and sampler (only when the steps vary)
    <name>-guidance.png    FID against conditional accuracy, one curve per run and sampler with the
                           guidance scale w at each point (only when w varies; udm.jobs.guidance_figure)

The folder may be a Hydra multirun (multirun.yaml beside numbered run folders), any folder of
run folders, one run folder, or a folder of loose eval JSON files. A run's overrides are those
its eval JSONs recorded (run_overrides, which udm-eval reads from the run's .hydra/overrides.yaml);
for older JSONs, the run's .hydra/overrides.yaml itself; failing that, its job's in the sweep's
multirun.yaml. Runs that failed (no checkpoint), were never evaluated, hold an unreadable JSON or
whose overrides are unknown, and sweep jobs that never started, each get one line on stderr and
under "Missing"; the report covers everything else. Only a folder with nothing at all to report
is an error.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from udm.errors import UdmError
from udm.jobs.guidance_figure import guidance_figure
from udm.jobs.outputs import check_output_folder
from udm.metrics.base import fmt, metric_classes

SCHEMA_PREFIX = "udm-eval/"
# (JSON key, column header, format) of the costs, after the metrics' columns (udm.metrics: each metric's `table`)
COST = (
    ("seconds_per_sample", "s/sample", "{:.3g}"),
    ("nfe_per_sample", "NFE/sample", "{:.4g}"),
)
EVAL_SETTINGS = ("n", "seed", "label", "labels", "class_prior", "guidance", "guidance_interval", "guidance_variant", "guide")
NOT_EVAL_SETTINGS = ("sampler_target", "sampler_steps", "sampler_prepare_seconds")  # implied by the name; own column; a cost
UNKNOWN, UNSET = "?", "—"


@dataclass
class Run:
    """One training run: where it lives, its label in the report and the overrides it was started with."""

    label: str
    folder: Path | None = None
    settings: dict[str, str] | None = None  # None: unknown (no .hydra folder)
    num: int | None = None                  # its job number in a multirun
    evals: list[dict[str, Any]] = field(default_factory=list)


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """["process=blur", "+seed=1"] -> {"process": "blur", "seed": "1"} (Hydra's +/++/~ prefixes dropped)."""
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value
    return out


def sweep_jobs(root: Path) -> list[list[str]] | None:
    """The override list of every job a multirun folder's multirun.yaml asked for, in job-number order (the
    product of its sweeps, in the order Hydra's basic sweeper runs them); None when the folder is not a
    basic-sweeper multirun."""
    path = root / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        hydra_cfg = yaml.safe_load(path.read_text())["hydra"]
        if "BasicSweeper" not in str(hydra_cfg["sweeper"]["_target_"]) or hydra_cfg["sweeper"].get("params"):
            return None
        choices: dict[str, list[str]] = {}  # a key given twice keeps its first place and its last values
        for o in OverridesParser.create().parse_overrides(hydra_cfg["overrides"]["task"]):
            key = o.get_key_element()
            if not o.is_sweep_override():
                choices[key] = [f"{key}={o.get_value_element_as_str()}"]
            elif o.is_discrete_sweep():
                choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            else:  # interval sweeps: not the basic sweeper's
                return None
        return [list(job) for job in itertools.product(*choices.values())]
    except (OSError, yaml.YAMLError, KeyError, TypeError, HydraException):  # costs only the jobs never started
        return None


def is_run(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in (".hydra", "checkpoints", "eval"))


def find(root: Path) -> tuple[list[Path], list[Path]]:
    """The run folders under root (root itself when it is one) and the eval JSON files lying outside any run."""
    runs, loose = [], []
    for here, dirs, files in os.walk(root):
        folder = Path(here)
        if is_run(folder):
            runs.append(folder)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        loose += [folder / f for f in sorted(files) if f.endswith(".json")]
    return runs, loose


def read_eval(path: Path) -> dict[str, Any]:
    """A udm-eval JSON as a dict; ValueError (with the reason) when it is not one."""
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(result, dict) or not str(result.get("schema", "")).startswith(SCHEMA_PREFIX):
        raise ValueError("not a udm-eval result (no udm-eval schema key)")
    if "sampler" not in result or "steps" not in result:
        raise ValueError("a udm-eval result without its sampler or steps")
    result["json"] = str(path)  # where it is now: the run may have moved since udm-eval wrote it
    return result


def read_evals(files: list[Path], root: Path, problems: list[str], owner: str) -> list[dict[str, Any]]:
    results = []
    for path in files:
        try:
            results.append(read_eval(path))
        except ValueError as e:
            problems.append(f"{owner}: {rel(path, root)} is {e}")
    return results


def recorded_overrides(evals: list[dict[str, Any]]) -> list[str] | None:
    """The run's overrides as its (first recording) eval JSON recorded them; None when none did (older udm-eval)."""
    return next((r["run_overrides"] for r in evals if isinstance(r.get("run_overrides"), list)), None)


def read_run(folder: Path, root: Path, jobs: list[list[str]] | None, problems: list[str]) -> Run:
    """A run folder's settings and evals; what is wrong with it goes to `problems`, one line each."""
    name = rel(folder, root)
    match = re.match(r"(\d+)(_|$)", folder.name) if jobs is not None else None
    run = Run(label=f"#{match.group(1)}" if match else name, folder=folder, num=int(match.group(1)) if match else None)
    files, unreadable = sorted((folder / "eval").glob("*.json")), []
    run.evals = read_evals(files, root, unreadable, name)
    overrides = folder / ".hydra" / "overrides.yaml"
    recorded = recorded_overrides(run.evals)
    if recorded is not None:
        run.settings = parse_overrides(recorded)
    elif overrides.is_file():
        try:
            run.settings = parse_overrides(yaml.safe_load(overrides.read_text()) or [])
        except (yaml.YAMLError, TypeError, AttributeError) as e:
            problems.append(f"{name}: unreadable .hydra/overrides.yaml ({str(e).splitlines()[0][:120]}); its settings are unknown")
    elif run.num is not None and run.num < len(jobs):
        run.settings = parse_overrides(jobs[run.num])
        problems.append(f"{name}: no .hydra folder; settings taken from the sweep's multirun.yaml (job {run.num})")
    else:
        problems.append(f"{name}: no .hydra folder; its settings are unknown")
    problems += unreadable
    if not files:
        if (folder / "checkpoints" / "last.ckpt").is_file():
            problems.append(f"{name}: no eval JSON in eval/; evaluate it with udm-eval ckpt={folder}")
        else:
            logs = sorted(p.name for p in folder.glob("*.log"))
            see = f" (see its {logs[0]})" if logs else ""
            problems.append(f"{name}: no checkpoints/last.ckpt; training failed or did not finish{see}")
    return run


def loose_runs(files: list[Path], root: Path, problems: list[str]) -> list[Run]:
    """Eval JSON files outside run folders, grouped into one run per run folder they name."""
    runs: dict[str, Run] = {}
    for result in read_evals(files, root, problems, rel(root, root.parent)):
        name = Path(str(result.get("run") or result["json"])).name
        run = runs.setdefault(name, Run(label=name))
        run.evals.append(result)
    for run in runs.values():  # the overrides its evals recorded, else its process
        recorded = recorded_overrides(run.evals)
        run.settings = parse_overrides(recorded) if recorded is not None else {"process": str(run.evals[0].get("process", UNKNOWN))}
    return list(runs.values())


def collect(root: Path) -> tuple[list[Run], list[str]]:
    """Every run under root with its evals, and one line per problem."""
    jobs = sweep_jobs(root)
    folders, loose = find(root)
    problems: list[str] = []
    runs = [read_run(folder, root, jobs, problems) for folder in folders] + loose_runs(loose, root, problems)
    if jobs is not None:
        present = {run.num for run in runs}
        problems += [f"job {i} ({' '.join(job)}): no run folder; the sweep stopped before it "
                     f"(a failed job ends Hydra's basic launcher) or has not reached it yet" for i, job in enumerate(jobs) if i not in present]
    runs.sort(key=lambda run: (run.num is None, run.num or 0, run.label))
    return runs, problems


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start) if path != start else path.name


def differing(dicts: list[dict[str, Any]], keys: list[str] | None = None) -> list[str]:
    """The keys (in first-seen order) whose values are not the same in every dict; a missing key counts as a value."""
    keys = list(dict.fromkeys(k for d in dicts for k in d)) if keys is None else keys
    return [k for k in keys if len({json.dumps(d.get(k), default=str) for d in dicts}) > 1]


def eval_settings(results: list[dict[str, Any]]) -> list[str]:
    """n, seed and sampler_* keys that differ between evals of the same sampler (eta 0 vs 0.5 for ddim, say)."""
    keys = [k for k in dict.fromkeys(k for r in results for k in r)
            if k in EVAL_SETTINGS or k.startswith("sampler_") and k not in NOT_EVAL_SETTINGS]
    by_sampler: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_sampler.setdefault(str(r["sampler"]), []).append(r)
    varying = {k for group in by_sampler.values() for k in differing(group, keys)}
    return [k for k in keys if k in varying]


def cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


@dataclass
class Table:
    header: list[str]
    align: list[str]  # "l" | "r"
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(map(cell, self.header)) + " |",
                 "|" + "|".join("---:" if a == "r" else "---" for a in self.align) + "|"]
        return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in self.rows])


def setting(run: Run, key: str) -> str:
    return UNKNOWN if run.settings is None else run.settings.get(key, UNSET)


def describe(run: Run, swept: list[str]) -> str:
    """How the report names a run: its swept settings, else its label."""
    if run.settings is None or not swept:
        return run.label
    return ", ".join(f"{k}={setting(run, k)}" for k in swept)


def metric_columns(classes) -> list[tuple[str, str, str]]:
    """(JSON key, header, format) of every row of every metric's table, in metric order, then the costs."""
    columns = {row.key: (row.key, row.compare_label or row.label, row.compare_fmt or row.fmt)
               for cls in classes for row in cls.table}
    return [*columns.values(), *(c for c in COST if c[0] not in columns)]


def build_table(runs: list[Run], swept: list[str], classes) -> Table:
    results = [r for run in runs for r in run.evals]
    extra = eval_settings(results)
    metrics = [(k, h, f) for k, h, f in metric_columns(classes) if any(k in r for r in results)]
    header = ["run", *swept, "sampler", "steps", *(k.removeprefix("sampler_") for k in extra), *(h for _, h, _ in metrics)]
    align = ["l"] * (1 + len(swept) + 1) + ["r"] * (1 + len(extra) + len(metrics))
    rows = []
    for run in runs:
        for r in sorted(run.evals, key=lambda r: (str(r["sampler"]), r["steps"] or 0, r["json"])):
            rows.append([run.label, *(setting(run, k) for k in swept), str(r["sampler"]), fmt(r["steps"]),
                         *(fmt(r.get(k)) for k in extra), *(fmt(r.get(k), f) for k, _, f in metrics)])
    return Table(header, align, rows)


def best_eval(run: Run) -> dict[str, Any]:
    """The eval whose samples represent the run: the lowest FID, else the first."""
    with_fid = [r for r in run.evals if isinstance(r.get("fid"), (int, float)) and not math.isnan(r["fid"])]
    return min(with_fid, key=lambda r: r["fid"]) if with_fid else run.evals[0]


def samples_file(result: dict[str, Any]) -> Path | None:
    """The eval's PNG grid: where udm-eval wrote it, else beside the JSON (the run may have moved)."""
    for path in (Path(str(result.get("samples_file", ""))), Path(result["json"]).with_suffix(".png")):
        if path.suffix == ".png" and path.is_file():
            return path
    return None


def first_cells(image, n: int, keep: int | None):
    """The top-left corner of a udm.grid PNG of n images holding about `keep` of them: whole cells only, from
    udm.grid's layout (ceil(sqrt(n)) per row, 2-pixel padding, upscaled by 64 // side); the whole grid when
    keep is None or the size does not fit that layout."""
    if not keep or keep >= n:
        return image
    per_row, pad = math.ceil(math.sqrt(n)), 2
    rows_total = math.ceil(n / per_row)
    height, width = image.shape[:2]
    for w in range(1, width):
        scale = max(1, 64 // w)
        cell_h, rest = divmod(height // scale - pad, rows_total)  # image height + pad
        if scale * (pad + per_row * (w + pad)) == width and not rest and height % scale == 0 and cell_h > pad:
            cols = min(per_row, math.ceil(math.sqrt(keep)))
            rows = math.ceil(keep / cols)
            return image[: scale * (pad + rows * cell_h), : scale * (pad + cols * (w + pad))]
    return image


def samples_figure(runs: list[Run], swept: list[str], path: Path, problems: list[str],
                   keep: int | None = None) -> Path | None:
    """One panel per run: the grid of its best-FID eval (about `keep` samples of it), titled by its settings,
    sampler, steps and FID."""
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    panels = []
    for run in runs:
        result = best_eval(run)
        png = samples_file(result)
        if png is None:
            if result.get("modality") == "image":
                problems.append(f"{run.label}: the sample grid of {Path(result['json']).name} is gone; no panel for it")
            continue
        title = f"{describe(run, swept)}\n{result['sampler']}, {result['steps']} steps"
        if "fid" in result:
            title += f", FID {fmt(result['fid'], '{:.1f}')}"
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("L" if image.mode in ("L", "1") else "RGB"))
        panels.append((first_cells(pixels, int(result.get("n") or 0), keep), title))
    if not panels:
        return None
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4 * cols, 4.4 * rows), layout="constrained")
    for i, (image, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.savefig(path, dpi=150)
    return path


def steps_figure(runs: list[Run], swept: list[str], path: Path) -> Path | None:
    """FID against steps and against seconds per sample: one line per (run, sampler); only when the steps vary."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    lines: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for r in run.evals:
            if isinstance(r.get("fid"), (int, float)):
                lines.setdefault(f"{describe(run, swept)}, {r['sampler']}", []).append(r)
    if len({r["steps"] for points in lines.values() for r in points}) < 2:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    by_steps, by_cost = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for label, points in lines.items():
        points = sorted(points, key=lambda r: r["steps"])
        line = by_steps.plot([r["steps"] for r in points], [r["fid"] for r in points], "o-", label=label)[0]
        costed = [r for r in points if r.get("seconds_per_sample")]
        by_cost.plot([r["seconds_per_sample"] for r in costed], [r["fid"] for r in costed], "o-", color=line.get_color())
    for ax, xlabel in ((by_steps, "sampling steps"), (by_cost, "seconds per sample")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("FID (lower is better)")
        ax.grid(True, which="major", alpha=0.3)
    fids = [r["fid"] for points in lines.values() for r in points]
    if min(fids) > 0 and max(fids) > 5 * min(fids):  # one bad run would flatten every other line
        for ax in (by_steps, by_cost):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    steps = sorted({r["steps"] for points in lines.values() for r in points})
    by_steps.set_xticks(steps, [str(s) for s in steps])
    by_steps.xaxis.set_minor_locator(NullLocator())
    by_cost.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    by_cost.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    by_steps.set_title("FID against sampling steps")
    by_cost.set_title("FID against sampling cost")
    fig.legend(*by_steps.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.savefig(path, dpi=150)
    return path


def fresh_stem(folder: Path, stem: str, suffixes: tuple[str, ...]) -> str:
    """stem, or stem-1, stem-2, ...: the first for which none of stem+suffix exists, so nothing is overwritten."""
    candidate, i = stem, 0
    while any((folder / f"{candidate}{s}").exists() for s in suffixes):
        i += 1
        candidate = f"{stem}-{i}"
    return candidate


def report(root: Path, runs: list[Run], problems: list[str], swept: list[str], table: Table,
           figures: list[tuple[str, Path]], out_dir: Path, title: str, classes=()) -> str:
    results = [r for run in runs for r in run.evals]
    shared = {}
    known = [run.settings for run in runs if run.settings is not None]
    if known:
        shared = {k: v for k, v in known[0].items() if k not in swept and all(s.get(k) == v for s in known)}
    lines = [f"# {title}", "",
             f"{len(results)} evaluations of {len(runs)} runs in `{root}`."
             + (f" Swept: {', '.join(f'`{k}`' for k in swept)}." if swept else "")]
    if shared:
        lines.append("Same in every run: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".")
    lines += ["", table.markdown(), ""]
    for note in dict.fromkeys(cls.compare_note(results) for cls in classes):  # e.g. fid's and kid's extractor, once
        if note:
            lines += [note, ""]
    lines += [("s/sample: wall seconds of the sampling loop per sample (on the device each eval names); "
               "NFE/sample: network evaluations per sample."), ""]
    for caption, path in figures:
        lines += [f"![{caption}]({os.path.relpath(path, out_dir)})", ""]
    if problems:
        lines += ["## Missing", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def warn(problems: list[str]) -> None:
    for line in problems:
        print(f"udm-compare: {line}", file=sys.stderr)


def compare(cfg: DictConfig) -> dict[str, Any]:
    root = Path(str(cfg.dir)).expanduser()
    name = str(cfg.name)
    if Path(name).name != name or name in (".", ".."):
        raise UdmError(f"name={name!r} is the report's file name, without folders; choose the folder with out_dir=")
    if cfg.get("out_dir"):
        check_output_folder(str(cfg.out_dir))
    if not root.is_dir():
        raise UdmError(f"{root} is not a folder; give a udm-train -m sweep folder (runs/multirun/<date>), "
                       f"a folder of run folders, or a folder of udm-eval JSON files")
    runs, problems = collect(root)
    runs = [run for run in runs if run.evals]
    if not runs:
        warn(problems)
        found = f"{len(problems)} problem(s) above" if problems else "no run folders and no eval JSON files"
        raise UdmError(f"nothing to compare in {root}: {found}; run udm-eval ckpt=<run> on the sweep's runs first")

    swept = differing([run.settings for run in runs if run.settings is not None])
    classes = list(metric_classes(cfg, strict=False).values())  # a metric whose class is not importable here: no column
    table = build_table(runs, swept, classes)
    out_dir = check_output_folder(str(cfg.out_dir) if cfg.get("out_dir") else root, key="out_dir" if cfg.get("out_dir") else "dir")
    stem = fresh_stem(out_dir, cfg.name, (".md", "-samples.png", "-fid-steps.png", "-guidance.png"))
    figures = []
    grid = samples_figure(runs, swept, out_dir / f"{stem}-samples.png", problems, cfg.get("panel_images"))
    if grid:
        figures.append(("the scored samples of each run", grid))
    steps = steps_figure(runs, swept, out_dir / f"{stem}-fid-steps.png")
    if steps:
        figures.append(("FID against sampling steps and sampling cost", steps))
    guided = guidance_figure(runs, lambda run: run.label, out_dir / f"{stem}-guidance.png")  # short names: many curves
    if guided:
        figures.append(("FID against conditional accuracy under guidance", guided))
    markdown = out_dir / f"{stem}.md"
    markdown.write_text(report(root, runs, problems, swept, table, figures, out_dir, cfg.title or f"udm-compare: {root.name}",
                                classes))

    warn(problems)
    print(table.markdown())
    print(f"udm-compare: {len(table.rows)} evaluations of {len(runs)} runs, {len(problems)} missing")
    print(f"udm-compare: report written to {markdown}")
    for _, path in figures:
        print(f"udm-compare: figure written to {path}")
    return {"markdown": markdown, "figures": [p for _, p in figures], "rows": table.rows, "header": table.header,
            "problems": problems, "swept": swept}
