"""Naive vs improved sampling of cold-diffusion checkpoints, side by side from the same x_T.

    python experiments/cold_samplers.py RUN [RUN ...] --out cold_samplers.png [--n 16]

One row pair per run: naive (baseline step) above improved (inverse step). Prints the
wall seconds of each and writes one PNG.
"""

from __future__ import annotations

import argparse
import time

import torch

import udm
from udm.checkpoint import build_from_checkpoint, find_checkpoint, load_checkpoint
from udm.grid import save_grid
from udm.jobs.sample import reference_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="cold_samplers.png")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prior-noise", type=float, default=None, help="replace the checkpoints' prior noise")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        checkpoint = load_checkpoint(find_checkpoint(run))
        process, net = build_from_checkpoint(checkpoint)
        if args.prior_noise is not None:
            process.prior_noise = args.prior_noise
        reference = reference_batch(checkpoint["udm"], args.n, getattr(process, "prior_needs_data", False))
        x_T = process.prior(reference, torch.Generator().manual_seed(args.seed))
        for method in ("baseline", "inverse"):
            start = time.perf_counter()
            rows.append(udm.sample(process, net, x_T, method=method, generator=torch.Generator().manual_seed(args.seed)))
            print(f"{run}: {process.describe()} {method:>8}: {time.perf_counter() - start:.1f}s for {args.n}")
    print(f"written to {save_grid(torch.cat(rows), args.out, nrow=args.n)}")


if __name__ == "__main__":
    main()
