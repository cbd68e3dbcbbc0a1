#!/usr/bin/env bash
# ACT's speed against exact attention, the default numbering (the fused hash-table
# kernel) against the sort, on one GPU, in parts that each fit one
# 10-minute call:
#   bash benchmarks/device/act_speed.sh [PART ...]        (default: encoder profile e2e)
# encoder: one layer and the 6-layer encoder at DC5 size (3800 tokens), batch 1 and 8,
#          exact against ACT at N/2, N/4, N/8 prototypes (numberings $NUMBERINGS, default
#          auto,sort), the fused kernel with one key range per program and with
#          automatic split-K ($SPLITS, default 1,auto), wall-clock and device-busy ms
# profile: device time per kernel of the DC5 forward at batch 1 (800x1216), exact against
#          ACT at the demo model's r = 3 prototype ratios, each kernel traced to its JAX op
# e2e:     DC5 end to end at batch 1 and 8, exact against the same ACT settings, for each
#          key-split setting in $E2E_SPLITS (default auto; e.g. "1 auto")
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
ratios="${RATIOS:-0.707/0.636/0.617/0.625/0.624/0.567}"
forced=("act_forced:L=32,r=8,ratios=$ratios" "act_forced:L=32,r=8,ratios=$ratios,ids=sort")
dc5=(--config configs/detr_r50_dc5.py --size 800x1216)
for part in ${@:-encoder profile e2e}; do
  case "$part" in
    encoder)
      python3 benchmarks/encoder_attention.py --batches 1,8 --reps 30 --kernels flash \
        --key-splits "${SPLITS:-1,auto}" --device-time --act-numbering "${NUMBERINGS:-auto,sort}" \
        --output "$out/encoder.json" > "$out/encoder.log" 2>&1
      grep -E "^\||rror" "$out/encoder.log" | tail -60 ;;
    profile)
      python3 benchmarks/kernel_profile.py "${dc5[@]}" --batch 1 --reps 10 --top 45 \
        --attention exact "${forced[@]}" --output "$out/kernels.json" > "$out/kernels.log" 2>&1
      grep -vE "Warning|cuda_timer" "$out/kernels.log" | tail -150 ;;
    e2e)
      for splits in ${E2E_SPLITS:-auto}; do
        echo "key splits: $splits"
        python3 benchmarks/forced_act.py "${dc5[@]}" --key-splits "$splits" --mode infer \
          --batch 1 8 --repeats 30 --attention exact "${forced[@]}" \
          --json "$out/e2e_splits_$splits.json" > "$out/e2e_splits_$splits.log" 2>&1
        grep -E "^\||rror" "$out/e2e_splits_$splits.log" | tail -8
      done ;;
    *) echo "unknown part $part (encoder profile e2e)"; exit 2 ;;
  esac
  echo "-- $part done at $(elapsed) s"
done
