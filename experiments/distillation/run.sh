#!/usr/bin/env bash
# Few-step generation by distillation on MNIST: two teachers (flow matching, 3,000 steps; cold blur, 1,200 steps, the
# budget of experiment=mnist_blur), their students by progressive distillation (flow: 16 -> 8 -> 4 -> 2 Euler steps,
# then one more round to 1; blur: 16 -> 8 -> 4 improved steps) and by consistency distillation (over the teacher's
# 16-step Euler or improved grid), each distillation timed; then FID (n = N) of the teachers at 1000 / 50 / 20 steps and
# below, of every student at its steps, and the sample grids side by side. PARTS selects stages:
# "teachers distill eval table" (default: all). Run the distillations on a quiet machine: their wall time is reported.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/distillation}
N=${N:-500}
PARTS=${PARTS:-"teachers distill eval table"}
OUT=experiments/distillation/results

timed() {  # timed RUN udm-train ...: train once, its wall time in RUN/wall_seconds
  local run=$1; shift
  [ -f "$run/checkpoints/last.ckpt" ] && return
  local start; start=$(date +%s)
  "$@" "hydra.run.dir=$run" callbacks.progress=null
  echo $(( $(date +%s) - start )) > "$run/wall_seconds"
}
evaluate() { udm-eval ckpt="$1" n="$N" "metrics=[fid]" progress=false "${@:2}"; }

if [[ " $PARTS " == *" teachers "* ]]; then
  timed "$RUNS/teacher_flow" udm-train experiment=mnist_flow trainer.max_steps=3000
  timed "$RUNS/teacher_blur" udm-train experiment=mnist_blur trainer.max_steps=1200
fi
if [[ " $PARTS " == *" distill "* ]]; then
  timed "$RUNS/progressive_flow" udm-train experiment=distill_mnist teacher="$RUNS/teacher_flow"
  # one more round, 2 -> 1 step: the 2-step student teaches (a progressive student is a teacher like any other)
  timed "$RUNS/progressive_flow_1" udm-train experiment=distill_mnist \
    teacher="$RUNS/progressive_flow/checkpoints/student-2steps.ckpt" distill.teacher_steps=2 distill.student_steps=1
  timed "$RUNS/consistency_flow" udm-train experiment=distill_mnist_consistency teacher="$RUNS/teacher_flow"
  timed "$RUNS/progressive_blur" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur"
  # round 2 again, twice as long (8 -> 4), from round 1's student
  timed "$RUNS/progressive_blur_long" udm-train experiment=distill_mnist_blur \
    teacher="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.teacher_steps=8 distill.student_steps=4 \
    distill.steps_per_round=1600
  # round 2 again (800 steps), each sample's error relative to the teacher's step (distill.weight=step)
  timed "$RUNS/progressive_blur_step" udm-train experiment=distill_mnist_blur \
    teacher="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.teacher_steps=8 distill.student_steps=4 \
    distill.weight=step
  # round 2 again (800 steps), the learning rate annealed to 0 on a cosine
  timed "$RUNS/progressive_blur_cosine" udm-train experiment=distill_mnist_blur \
    teacher="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.teacher_steps=8 distill.student_steps=4 \
    'scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,T_max:800}'
  # 16 -> 4 in one round: one student step for four of the teacher's (distill.factor=4), 1,600 steps
  timed "$RUNS/progressive_blur_factor4" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.factor=4 distill.steps_per_round=1600
  # x_t where the sampler stands (distill.states=teacher): round 2 alone, and both rounds from the teacher
  timed "$RUNS/progressive_blur_states" udm-train experiment=distill_mnist_blur \
    teacher="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.teacher_steps=8 distill.student_steps=4 \
    distill.states=teacher
  timed "$RUNS/progressive_blur_states2" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.states=teacher
  # round 2 again (800 steps) with the absolute error (distill.norm=l1; the blur teacher trained on L1)
  timed "$RUNS/progressive_blur_l1" udm-train experiment=distill_mnist_blur \
    teacher="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.teacher_steps=8 distill.student_steps=4 \
    distill.norm=l1
  # 16 -> 4 in one round (distill.factor=4) taught by the teacher, the student starting from round 1's 8-step student
  timed "$RUNS/progressive_blur_from8" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    student="$RUNS/progressive_blur/checkpoints/student-8steps.ckpt" distill.factor=4 distill.steps_per_round=1600
  timed "$RUNS/consistency_blur" udm-train experiment=distill_mnist_blur_consistency teacher="$RUNS/teacher_blur"
  # the recipe on the power grid t_i = round(50 (i/n)^p): more steps near T, a longer last step
  for p in 05 06; do
    timed "$RUNS/progressive_blur_power$p" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
      distill.sampler.grid=power distill.sampler.power=${p:0:1}.${p:1}
  done
  # one round, 8 -> 4, from the teacher at 8 steps on the power grid 0.5 (FID 51.2 there), on forward and teacher states
  timed "$RUNS/progressive_blur_power05_8to4" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.teacher_steps=8 distill.sampler.grid=power distill.sampler.power=0.5
  timed "$RUNS/progressive_blur_power05_8to4_states" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.teacher_steps=8 distill.sampler.grid=power distill.sampler.power=0.5 distill.states=teacher
  timed "$RUNS/progressive_blur_power05_8to4_states_long" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.teacher_steps=8 distill.sampler.grid=power distill.sampler.power=0.5 distill.states=teacher \
    distill.steps_per_round=1600
  # the same with the absolute error, 800 steps; and 1,600: experiment=distill_mnist_blur_power, the student that meets the bar
  timed "$RUNS/progressive_blur_power05_8to4_states_l1" udm-train experiment=distill_mnist_blur teacher="$RUNS/teacher_blur" \
    distill.teacher_steps=8 distill.sampler.grid=power distill.sampler.power=0.5 distill.states=teacher distill.norm=l1
  timed "$RUNS/progressive_blur_power05_8to4_states_l1_long" udm-train experiment=distill_mnist_blur_power \
    teacher="$RUNS/teacher_blur"
fi
if [[ " $PARTS " == *" eval "* ]]; then
  for steps in 1000 50 20 8 4 2 1; do evaluate "$RUNS/teacher_flow" sampler=euler sampler.steps=$steps; done
  for steps in 8 4 2; do evaluate "$RUNS/progressive_flow/checkpoints/student-${steps}steps.ckpt"; done
  evaluate "$RUNS/progressive_flow_1"
  for steps in 8 4 2 1; do evaluate "$RUNS/consistency_flow" sampler.steps=$steps; done
  evaluate "$RUNS/progressive_flow/checkpoints/student-2steps.ckpt" sampler.steps=1   # fewer steps than distilled for
  for steps in 50 32 20 16 8 4 2 1; do evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=$steps; done
  for steps in 8 4; do evaluate "$RUNS/progressive_blur/checkpoints/student-${steps}steps.ckpt"; done
  evaluate "$RUNS/progressive_blur_states2/checkpoints/student-8steps.ckpt"   # round 1 on the teacher's states
  evaluate "$RUNS/progressive_blur/checkpoints/student-4steps.ckpt" sampler.steps=2
  evaluate "$RUNS/progressive_blur/checkpoints/student-4steps.ckpt" sampler.steps=1
  for steps in 16 8 4; do evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=$steps sampler.grid=power sampler.power=0.5; done
  for p in 0.3 0.4 0.6 0.8 1.25 1.5 2.0; do for steps in 16 4; do  # the power grid's exponent, seed 0 (README's sweep)
    evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=$steps sampler.grid=power sampler.power=$p \
      out_dir="$RUNS/grid_sweep/power$p"
  done; done
  for p in 05 06; do evaluate "$RUNS/progressive_blur_power$p/checkpoints/student-8steps.ckpt"; done
  for steps in 8 4 2 1; do evaluate "$RUNS/consistency_blur" sampler.steps=$steps; done
  for seed in 0 1 2; do  # the blur bar (4-step student against the teacher at 50) on three draws of 500 samples
    evaluate "$RUNS/progressive_blur_long" seed=$seed
    evaluate "$RUNS/progressive_blur_step" seed=$seed
    for run in cosine factor4 states states2 l1 from8 power05 power06 power05_8to4 \
               power05_8to4_states power05_8to4_states_long power05_8to4_states_l1 power05_8to4_states_l1_long; do
      evaluate "$RUNS/progressive_blur_$run" seed=$seed
    done
    [ "$seed" = 0 ] && continue
    evaluate "$RUNS/progressive_blur/checkpoints/student-4steps.ckpt" seed=$seed
    evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=50 seed=$seed
    evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=4 sampler.grid=power sampler.power=0.5 seed=$seed
    evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=8 sampler.grid=power sampler.power=0.5 seed=$seed
    evaluate "$RUNS/consistency_blur" sampler.steps=4 seed=$seed
  done
  for seed in 3 4 5; do  # three more draws for the two closest students and the bar
    evaluate "$RUNS/progressive_blur_power05_8to4_states_l1" seed=$seed
    evaluate "$RUNS/progressive_blur_power05_8to4_states_l1_long" seed=$seed
    evaluate "$RUNS/teacher_blur" sampler=improved sampler.steps=50 seed=$seed
  done
fi
if [[ " $PARTS " == *" table "* ]]; then
  python experiments/distillation/table.py "$RUNS" "$OUT"
fi
