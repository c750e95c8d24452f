"""udm-compare's guidance figure: sample quality against conditional accuracy, one curve per run and sampler
(and guidance interval / variant / guide), with the guidance scale w written at each point; the FID of the
unconditional evaluations in the same comparison as dashed lines for reference."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

ACCURACIES = (("class_accuracy", "class accuracy (udm's classifier)"), ("author_accuracy", "author accuracy (udm's classifier)"))
CURVE_KEYS = ("guidance_interval", "guidance_variant", "guide")  # evals differing in these are different curves


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def curve_name(label: str, r: dict[str, Any]) -> str:
    extra = []
    for key in CURVE_KEYS:
        value = r.get(key)
        if value in (None, "cfg"):
            continue
        shown = Path(str(value)).name if key == "guide" else json.dumps(value, ensure_ascii=False).strip('"')
        extra.append(f"{key.removeprefix('guidance_')}={shown}")
    return ", ".join([label, str(r["sampler"]), *extra])


def guidance_figure(runs: list, label: Callable[[Any], str], path: Path) -> Path | None:
    """The figure at `path`, or None where no curve has two guidance scales with FID and an accuracy."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    results = [(label(run), r) for run in runs for r in run.evals]
    key, xlabel = next(((k, x) for k, x in ACCURACIES if any(is_number(r.get(k)) for _, r in results)), (None, None))
    if key is None:
        return None
    curves: dict[str, list[dict[str, Any]]] = {}
    for name, r in results:
        if is_number(r.get(key)) and is_number(r.get("fid")) and is_number(r.get("guidance")):
            curves.setdefault(curve_name(name, r), []).append(r)
    if not any(len({r["guidance"] for r in points}) > 1 for points in curves.values()):
        return None  # a single guided point (a w = 3 interval run, say) is drawn beside curves, never alone
    fig = Figure(figsize=(12, 6), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for name, points in curves.items():
        points = sorted(points, key=lambda r: r["guidance"])
        xs, ys = [r[key] * 100 for r in points], [r["fid"] for r in points]
        ax.plot(xs, ys, "o-", label=name)
        for x, y, r in zip(xs, ys, points):
            ax.annotate(f"w={r['guidance']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for name, r in results:  # unconditional evaluations: no condition asked, a FID to beat
        if r.get("labels") is None and r.get("label") is None and is_number(r.get("fid")):
            ax.axhline(r["fid"], linestyle="--", linewidth=1, color="gray")
            ax.annotate(f"{name}, {r['sampler']} (unconditional)", (0, r["fid"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(4, 3), fontsize=7, color="gray")
    fids = [r["fid"] for points in curves.values() for r in points]
    if min(fids) > 0 and max(fids) > 5 * min(fids):  # a few bad points would flatten the good ones
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{xlabel}, %")
    ax.set_ylabel("FID (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.set_title("Classifier-free guidance: FID against conditional accuracy")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
    fig.savefig(path, dpi=150)
    return path
