#!/usr/bin/env bash
# The Gaussian family as one affine process: VP-eps, VP-v, flow matching and EDM trained on MNIST with the same
# net, optimizer and steps (STEPS, default 3,000: about 5 minutes on 2 quiet cores, 2.5x the demo's 1,200), then FID against network evaluations (NFE) with
# DPM-Solver++(3M) for every family, each family's own sampler at 10 NFE, a 100-step reference, and bits/dim by
# the probability-flow ODE, and the 1,000-step Euler (= DDIM) solution as each family's reference. PARTS selects
# stages: "train eval reference table" (default: all).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/gaussian_family}
N=${N:-500}
BPD=${BPD:-64}
STEPS=${STEPS:-3000}
FAMILIES=${FAMILIES:-"vp_eps vp_v flow edm"}
PARTS=${PARTS:-"train eval reference table"}
OUT=experiments/gaussian_family/results
declare -A RECIPE=(
  [vp_eps]="experiment=mnist process.parametrization=eps"
  [vp_v]="experiment=mnist"
  [flow]="experiment=mnist_flow"
  [edm]="experiment=mnist_edm"
)
declare -A OWN=(  # each family's paper sampler at about 10 NFE
  [vp_eps]="sampler=ddim sampler.steps=10"
  [vp_v]="sampler=ddim sampler.steps=10"
  [flow]="sampler=euler sampler.steps=10"
  [edm]="sampler=heun sampler.steps=6"
)
train() { [ -f "$RUNS/$1/checkpoints/last.ckpt" ] || udm-train ${RECIPE[$1]} trainer.max_steps="$STEPS" "hydra.run.dir=$RUNS/$1" final_samples=64; }
evaluate() { udm-eval ckpt="$RUNS/$1" n="$N" "metrics=[fid]" progress=false "${@:2}"; }

if [[ " $PARTS " == *" train "* ]]; then
  for f in $FAMILIES; do train "$f"; done
fi
if [[ " $PARTS " == *" eval "* ]]; then
  for f in $FAMILIES; do
    for nfe in 5 10 20 50 100; do evaluate "$f" sampler=dpm_solver_3m sampler.steps=$nfe; done
    evaluate "$f" ${OWN[$f]}
    # bits/dim by the probability-flow ODE on BPD held-out images (Hutchinson's divergence, tolerances 1e-4)
    udm-eval ckpt="$RUNS/$f" n=16 ode_bpd_samples="$BPD" "metrics=[ode_bpd]" +metric.ode_bpd.rtol=1e-4 \
      +metric.ode_bpd.atol=1e-4 progress=false
  done
fi
if [[ " $PARTS " == *" reference "* ]]; then  # the 1,000-step ODE solution: Euler (= DDIM) on every grid time
  for f in $FAMILIES; do evaluate "$f" sampler=euler sampler.steps=1000; done
fi
if [[ " $PARTS " == *" table "* ]]; then
  mkdir -p "$OUT"
  python experiments/gaussian_family/table.py "$RUNS" "$OUT"
fi
