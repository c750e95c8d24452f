#!/usr/bin/env bash
# The Gaussian family as one affine process: VP-eps, VP-v, flow matching and EDM trained on MNIST with the same
# net, optimizer and steps (STEPS, default 3,000: about 5 minutes on 2 quiet cores, 2.5x the demo's 1,200), then FID
# at 5, 10, 20 and 50 network evaluations (NFE) for every sampler that fits (Euler, DPM-Solver++ 2M and 3M on two
# or three grids, Heun), bits/dim by the probability-flow ODE, and the 1,000-step Euler (= DDIM) solution as each family's
# reference. PARTS selects stages: "train eval reference table" (default: all); FAMILIES selects families.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/gaussian_family}
N=${N:-500}       # samples per FID
BPD=${BPD:-64}    # held-out images for the ODE's bits/dim
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
train() { [ -f "$RUNS/$1/checkpoints/last.ckpt" ] || udm-train ${RECIPE[$1]} trainer.max_steps="$STEPS" "hydra.run.dir=$RUNS/$1" final_samples=64; }
evaluate() { udm-eval ckpt="$RUNS/$1" n="$N" "metrics=[fid]" progress=false "${@:2}"; }

if [[ " $PARTS " == *" train "* ]]; then
  for f in $FAMILIES; do train "$f"; done
fi
if [[ " $PARTS " == *" eval "* ]]; then
  for f in $FAMILIES; do
    for nfe in 5 10 20 50; do
      evaluate "$f" sampler=euler sampler.steps=$nfe
      evaluate "$f" sampler=dpm_solver sampler.steps=$nfe
      evaluate "$f" sampler=dpm_solver_3m sampler.steps=$nfe
      evaluate "$f" sampler=dpm_solver_3m sampler.steps=$nfe sampler.grid=logsnr
      evaluate "$f" sampler=dpm_solver sampler.steps=$nfe sampler.grid=uniform
      evaluate "$f" sampler=dpm_solver_3m sampler.steps=$nfe sampler.grid=uniform
    done
    evaluate "$f" sampler=heun sampler.steps=6  # 10 NFE on flow (its first step, out of sigma = inf, is Euler)
    for steps in 3 5 10 25; do evaluate "$f" sampler=heun sampler.steps=$steps; done  # 5, 9, 19, 49 NFE (flow: 1 less)
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
  for f in $FAMILIES; do  # 64 samples each at 10 NFE (DPM-Solver++ 2M, uniform grid), side by side in the results
    [ -f "$RUNS/$f/samples/dpm_solver-10steps-n64-seed0.png" ] ||
      udm-sample ckpt="$RUNS/$f" n=64 sampler=dpm_solver sampler.steps=10 sampler.grid=uniform
  done
  python experiments/gaussian_family/table.py "$RUNS" "$OUT"
fi
