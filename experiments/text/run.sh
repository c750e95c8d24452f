#!/usr/bin/env bash
# Discrete diffusion that writes well (issue 19): quatrains from the mask, edit and uniform token processes at the
# default budget (1,000 steps), sampled at 1, 2, 4, 8 tokens per step, with and without remasking (ReMDM) and
# nucleus sampling, scored by udm's own fluency judge (a small GPT-2 trained on the training split, cached) with
# held-out real quatrains as the reference; whole verses (64 tokens) all at once against block by block.
# Writes runs under runs/text/, each setting's texts and JSON under runs/text/gen/, and results/README-table.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-runs/text}
N=${N:-100}          # quatrains per setting
NVERSE=${NVERSE:-100}
train() { [ -f "$RUNS/$1/checkpoints/last.ckpt" ] || udm-train "${@:2}" "hydra.run.dir=$RUNS/$1" final_samples=0; }
generate() {  # name ckpt args...: one setting, skipped when its JSON exists
  local out="$RUNS/gen/$1"
  ls "$out"/*.json >/dev/null 2>&1 && return
  udm-generate ckpt="$RUNS/$2" n="${N_OVERRIDE:-$N}" show=0 fluency="${FLUENCY:-true}" progress=false out_dir="$out" "${@:3}" > "$out.log" 2>&1 \
    || { echo "failed: $1 (see $out.log)"; return 1; }
}
mkdir -p "$RUNS/gen"

quatrains() {
  train quatrain_mask experiment=quatrain_mask
  train quatrain_replace experiment=quatrain_replace
  train quatrain_uniform experiment=quatrain_uniform
  for pair in mask:quatrain_mask edit:quatrain_replace uniform:quatrain_uniform; do
    proc=${pair%%:*} run=${pair#*:}
    for tps in 1 2 4 8; do
      generate "$proc-tps$tps" "$run" tokens_per_step=$tps
      generate "$proc-tps$tps-remdm-top_p0.9" "$run" tokens_per_step=$tps sampler=remdm top_p=0.9
    done
    generate "$proc-tps1-top_p0.9" "$run" tokens_per_step=1 top_p=0.9
    generate "$proc-tps1-remdm" "$run" tokens_per_step=1 sampler=remdm
    generate "$proc-tps1-remdm_loop-top_p0.9" "$run" tokens_per_step=1 sampler=remdm sampler.loop_steps=16 top_p=0.9
  done
}

best() {  # the best settings again at N_BEST quatrains (form accuracy at n = 100 moves by 1% per text), and orders
  N_OVERRIDE=${N_BEST:-500} generate "best-mask-tps2-remdm-top_p0.9-n${N_BEST:-500}" quatrain_mask tokens_per_step=2 sampler=remdm top_p=0.9
  N_OVERRIDE=${N_BEST:-500} generate "best-mask-tps1-remdm_loop-top_p0.9-n${N_BEST:-500}" quatrain_mask tokens_per_step=1 sampler=remdm \
    sampler.loop_steps=16 top_p=0.9
  for order in confidence margin entropy; do
    generate "mask-tps2-remdm-top_p0.9-$order" quatrain_mask tokens_per_step=2 sampler=remdm top_p=0.9 order=$order
  done
}

recipe() {  # the 3,000-step mask model (27 minutes on one thread here): form >= 98% with the perplexity bar
  train quatrain_mask_3k experiment=quatrain_mask trainer.max_steps=3000 trainer.val_check_interval=1000
  N_OVERRIDE=${N_BEST:-500} generate "mask3k-tps1-plain-n${N_BEST:-500}" quatrain_mask_3k tokens_per_step=1
  N_OVERRIDE=${N_BEST:-500} generate "mask3k-tps2-remdm-top_p0.9-n${N_BEST:-500}" quatrain_mask_3k tokens_per_step=2 sampler=remdm top_p=0.9
}

verses() {  # a verse line by line (blocks of 8 tokens), couplet by couplet (16), or all 64 tokens at once
  train verse_mask experiment=verse_mask
  for order in random confidence; do
    # form only: the verses' judge would be another GPT-2 to train (FLUENCY=true trains and uses it)
    N_OVERRIDE=$NVERSE FLUENCY=${VERSE_FLUENCY:-false} generate "verse-whole-$order" verse_mask order=$order
    N_OVERRIDE=$NVERSE FLUENCY=${VERSE_FLUENCY:-false} generate "verse-lines-$order" verse_mask order=$order block_size=8
    N_OVERRIDE=$NVERSE FLUENCY=${VERSE_FLUENCY:-false} generate "verse-couplets-$order" verse_mask order=$order block_size=16
  done
}

nelbo() {  # the token NELBO on held-out quatrains (the edit model has no tractable bound)
  for run in quatrain_mask quatrain_uniform; do
    [ -f "$RUNS/$run/eval-nelbo.log" ] || udm-eval ckpt="$RUNS/$run" n=16 "metrics=[nelbo]" progress=false > "$RUNS/$run/eval-nelbo.log" 2>&1
  done
}

for part in ${PARTS:-quatrains best recipe verses nelbo}; do "$part"; done
python experiments/text/table.py "$RUNS" > experiments/text/results/table.md
cat experiments/text/results/table.md
