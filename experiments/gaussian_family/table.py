"""The Gaussian-family experiment's tables and figure from the udm-eval JSON files beside each run.

    python experiments/gaussian_family/table.py RUNS OUT

RUNS holds one run per family (vp_eps, vp_v, flow, edm); OUT gets table.md and fid_vs_nfe.png. A sampler is named
by its config and any grid override (e.g. "dpm_solver_3m/logsnr"); at each budget of network evaluations (5, 10,
20, 50) the table takes each family's best sampler that spends at most that many.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from udm.grid import side_by_side

LABEL = {"vp_eps": "VP-eps", "vp_v": "VP-v", "flow": "flow", "edm": "EDM"}
BUDGETS = (5, 10, 20, 50)


def results(run: Path) -> list[dict]:
    """The run's evaluations, one per setting (a rerun of the same setting writes another file: the first counts)."""
    seen, kept = set(), []
    for path in sorted((run / "eval").glob("*.json")):
        result = json.loads(path.read_text())
        key = tuple(sorted(o for o in result.get("eval_overrides", []) if not o.startswith("ckpt=")))
        if key not in seen:
            seen.add(key)
            kept.append(result)
    return kept


def sampler_name(result: dict) -> str:
    grid = next((o.split("=", 1)[1] for o in result.get("eval_overrides", []) if o.startswith("sampler.grid=")), None)
    return result["sampler"] + (f"/{grid}" if grid else "")


def best_within(fids: list[dict], budget: int) -> dict | None:
    fitting = [r for r in fids if r["nfe_per_sample"] <= budget and r["nfe_per_sample"] > budget / 2]
    return min(fitting, key=lambda r: r["fid"], default=None)


def main(runs: Path, out: Path) -> None:
    families = {f: results(runs / f) for f in LABEL if (runs / f / "eval").is_dir()}
    best_rows, all_rows, curves, references = [], [], {}, {}
    for family, found in families.items():
        fids = [r for r in found if "fid" in r]
        reference = next((r["fid"] for r in fids if r["sampler"] == "euler" and r["nfe_per_sample"] == 1000), None)
        references[family] = reference
        bpd = next((f"{r['ode_bpd']:.3f} ± {r['ode_bpd_sem']:.3f}" for r in found if "ode_bpd" in r), "-")
        best = {b: best_within([r for r in fids if r["nfe_per_sample"] < 100], b) for b in BUDGETS}
        curves[family] = [(b, r["fid"]) for b, r in best.items() if r is not None]
        cells = [f"{r['fid']:.2f} ({sampler_name(r)}, {r['nfe_per_sample']:.0f})" if r else "-" for r in best.values()]
        ratio = f"{best[10]['fid'] / reference:.2f}x" if best[10] and reference else "-"
        ref_cell = f"{reference:.2f}" if reference else "-"
        process = fids[0]["process"] if fids else "-"
        best_rows.append(f"| {LABEL[family]} | {process} | " + " | ".join(cells) + f" | {ref_cell} | {ratio} | {bpd} |")
        for r in sorted(fids, key=lambda r: (sampler_name(r), r["nfe_per_sample"])):
            all_rows.append(f"| {LABEL[family]} | {sampler_name(r)} | {r['steps']} | {r['nfe_per_sample']:.0f} | {r['fid']:.2f} |")
    first = next((r for found in families.values() for r in found if "fid" in r), {})
    text = [f"# Gaussian family on MNIST: FID against network evaluations ({first.get('global_step', '?')} training steps each)", "",
            f"n = {first.get('n', '?')} samples per FID (udm's MNIST feature extractor). Each cell: the best FID among the samplers "
            "measured that spend at most that many network evaluations (more than half of them), with the sampler and its NFE. "
            "The reference is Euler (= DDIM) at 1,000 steps, the probability-flow ODE's solution.", "",
            "| family | process | NFE <= 5 | <= 10 | <= 20 | <= 50 | Euler @1000 | <= 10 / ref. | ODE bits/dim |",
            "|---|---|---|---|---|---|---|---|---|", *best_rows, "", "## Every evaluation", "",
            "| family | sampler | steps | NFE | FID |", "|---|---|---|---|---|", *all_rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    figure(curves, references, out / "fid_vs_nfe.png")
    side_by_side({f"{LABEL[f]}, 10 NFE": runs / f / "samples" / GRID for f in families}, out / "samples_10nfe.png")


GRID = "dpm_solver-10steps-n64-seed0.png"  # udm-sample n=64 sampler=dpm_solver sampler.steps=10 sampler.grid=uniform


def figure(curves: dict, references: dict, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for family, points in curves.items():
        if not points:
            continue
        line, = ax.plot(*zip(*points), marker="o", label=LABEL[family])
        if references.get(family):
            ax.axhline(references[family], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(BUDGETS), labels=[str(b) for b in BUDGETS])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([5, 10, 20, 50], labels=["5", "10", "20", "50"])
    ax.set_xlabel("network evaluations (best sampler within the budget)")
    ax.set_ylabel("FID (udm's MNIST features)")
    ax.set_title("dotted: Euler at 1,000 steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
