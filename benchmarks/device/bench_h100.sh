#!/usr/bin/env bash
# DETR-DC5 / R50 tables on one GPU (800x1216, random weights), in groups
# that each fit one 10-minute call; every group writes $OUT/<group>.json and <group>.log:
#   bash benchmarks/device/bench_h100.sh [GROUP ...]      (default: infer train act)
# infer: exact DC5 at batch 1, 8, 32 in TF32 and bf16
# train: training steps, DC5 and R50 at batch 4 (the official figures are at batch 4), 7 boxes per image;
#        TRAIN_BATCHES="1 4 8" for more batches (each costs a compile of 1-2 minutes)
# act:   ACT L=32 end to end against exact at batch 1 and 8, the prototype ratio per layer
#        beside each row, and the encoder alone with forced prototype counts
# act_trained: ACT L=32 end to end against exact at batch 1 and 8 with the prototype counts
#        forced to the demo model's per-layer ratios at L=32, r=4 and at L=32, r=3 (docs/act.md),
#        the rest of ACT unchanged (benchmarks/forced_act.py)
# enact: training step of the demo config (batch 32, 512x512), exact against ENACT;
#        ENACT_SETTINGS="enact:sigma=3 ..." picks the ENACT settings (default: the shipped
#        enact:sigma=0.5,layers=3/4/5)
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
bench() {  # group name, benchmark arguments...
  local name="$1"; shift
  python3 -m detr_jax.benchmark --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  grep -E "^\||rror" "$out/$name.log" | tail -20
  echo "-- $name done at $(elapsed) s"
}
bench_forced() {  # as bench, with the timing-only act_forced setting registered
  local name="$1"; shift
  python3 benchmarks/forced_act.py --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  grep -E "^\||rror" "$out/$name.log" | tail -20
  echo "-- $name done at $(elapsed) s"
}
dc5=(--config configs/detr_r50_dc5.py --size 800x1216)
for group in ${@:-infer train act}; do
  case "$group" in
    infer) bench infer "${dc5[@]}" --mode infer --batch 1 8 32 --precision default bf16 --repeats 20 ;;
    train)
      read -r -a batches <<< "${TRAIN_BATCHES:-4}"
      bench train_dc5 "${dc5[@]}" --mode train --batch "${batches[@]}" --warmup 3 --repeats 15
      bench train_r50 --config configs/detr_r50.py --size 800x1216 --mode train \
        --batch "${batches[@]}" --warmup 3 --repeats 15 ;;
    act)
      bench act "${dc5[@]}" --mode infer --attention exact act:L=32,r=8 act:L=32,r=4 act:L=32,r=2 \
        --batch 1 8 --repeats 20
      python3 benchmarks/encoder_attention.py --batches 1,8 --reps 30 \
        --output "$out/encoder_attention.json" > "$out/encoder_attention.log" 2>&1
      tail -14 "$out/encoder_attention.log"; echo "-- encoder done at $(elapsed) s" ;;
    act_trained)
      bench_forced act_trained "${dc5[@]}" --mode infer --batch 1 8 --repeats 20 --attention exact \
        act_forced:L=32,r=8,ratios=0.5/0.498/0.488/0.455/0.502/0.438 \
        act_forced:L=32,r=8,ratios=0.707/0.636/0.617/0.625/0.624/0.567 ;;
    enact)
      read -r -a settings <<< "${ENACT_SETTINGS:-enact:sigma=0.5,layers=3/4/5}"
      bench enact --config configs/synthetic_demo.py --size 512x512 --boxes 7 --mode train \
        --batch 32 --attention exact "${settings[@]}" --warmup 3 --repeats 15 ;;
    *) echo "unknown group $group (infer train act act_trained enact)"; exit 2 ;;
  esac
done
