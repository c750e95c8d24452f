"""The Gaussian-family experiment's table and figure from the udm-eval JSON files beside each run.

    python experiments/gaussian_family/table.py RUNS OUT

RUNS holds one run per family (vp_eps, vp_v, flow, edm); OUT gets table.md and fid_vs_nfe.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LABEL = {"vp_eps": "VP-eps", "vp_v": "VP-v", "flow": "flow", "edm": "EDM"}
REFERENCE_NFE = 100


def results(run: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "eval").glob("*.json"))]


def main(runs: Path, out: Path) -> None:
    rows, curves = [], {}
    for family in LABEL:
        found = results(runs / family)
        if not found:
            continue
        solver = {round(r["nfe_per_sample"]): r for r in found if r["sampler"] == "dpm_solver_3m" and "fid" in r}
        own = [r for r in found if r["sampler"] != "dpm_solver_3m" and "fid" in r and r["nfe_per_sample"] < 100]
        long = next((r["fid"] for r in found if r["sampler"] == "euler" and r["nfe_per_sample"] == 1000 and "fid" in r), None)
        bpd = next((f"{r['ode_bpd']:.3f} ± {r['ode_bpd_sem']:.3f}" for r in found if "ode_bpd" in r), None)
        curves[family] = sorted((nfe, r["fid"]) for nfe, r in solver.items() if nfe < REFERENCE_NFE)
        at100 = solver.get(REFERENCE_NFE, {}).get("fid")
        reference = long if long is not None else at100
        at10 = solver.get(10, {}).get("fid")
        rows.append((family, solver, own, reference, at10, bpd, found[0], at100, long))
    lines = ["| family | process | FID @5 | @10 | @20 | @50 | @100 | Euler @1000 | @10 / ref. | own sampler @NFE: FID | ODE bits/dim |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, solver, own, reference, at10, bpd, first, at100, long in rows:
        cells = [f"{solver[n]['fid']:.2f}" if n in solver else "-" for n in (5, 10, 20, 50)]
        ratio = f"{at10 / reference:.2f}x" if at10 and reference else "-"
        own_cell = "; ".join(f"{r['sampler']} @{r['nfe_per_sample']:.0f}: {r['fid']:.2f}" for r in own) or "-"
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {LABEL[family]} | {first['process']} | " + " | ".join(cells)
                     + f" | {fmt(at100)} | {fmt(long)} | {ratio} | {own_cell} | {bpd or '-'} |")
    steps = rows[0][6]["global_step"] if rows else "?"
    text = [f"# Gaussian family on MNIST: FID against network evaluations ({steps} training steps each)", "",
            "DPM-Solver++(3M) on the log-SNR grid rounded to the integer grid (`sampler=dpm_solver_3m`) for every family;",
            "the reference is Euler (= DDIM) at 1,000 steps, the ODE's solution (where absent: the solver at "
            f"{REFERENCE_NFE} steps). n = {rows[0][6]['n'] if rows else '?'} samples per FID (udm's MNIST feature extractor).",
            ""] + lines
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    figure(curves, {row[0]: row[3] for row in rows}, out / "fid_vs_nfe.png")


def figure(curves: dict, references: dict, path: Path) -> None:
    import matplotlib

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
    ax.set_xticks([5, 10, 20, 50], labels=["5", "10", "20", "50"])
    ax.set_xlabel("network evaluations (DPM-Solver++ 3M)")
    ax.set_ylabel("FID (udm's MNIST features)")
    ax.set_title("dotted: Euler at 1,000 steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
