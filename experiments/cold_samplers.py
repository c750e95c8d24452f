"""Naive vs improved sampling of cold-diffusion checkpoints, side by side from the same x_T.

    python experiments/cold_samplers.py RUN [RUN ...] --out cold_samplers.png [--n 16]

One row pair per run: naive (baseline step) above improved (inverse step). Prints the
wall seconds of each and writes one PNG.
"""

from __future__ import annotations

import argparse
import time

import torch

from udm.grid import save_grid
from udm.models import open_model
from udm.samplers import Improved, Naive


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
        model = open_model(run, device="cpu")
        process, net = model.process, model.net
        if args.prior_noise is not None:
            process.prior_noise = args.prior_noise
        reference = model.references(args.n)  # held-out images where the prior needs data (cold processes)
        x_T = process.prior(reference, torch.Generator().manual_seed(args.seed))
        for method, sampler in (("baseline", Naive(steps=None)), ("inverse", Improved(steps=None))):
            start = time.perf_counter()
            rows.append(sampler(process, net, x_T, generator=torch.Generator().manual_seed(args.seed)))
            print(f"{run}: {process.describe()} {method:>8}: {time.perf_counter() - start:.1f}s for {args.n}")
    print(f"written to {save_grid(torch.cat(rows), args.out, nrow=args.n)}")


if __name__ == "__main__":
    main()
