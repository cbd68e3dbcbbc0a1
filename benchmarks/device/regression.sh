#!/usr/bin/env bash
# The speed regression table on one GPU, DETR-DC5 R50 at 800x1216 on random weights (medians
# after warm-up): exact inference at batch 1 and 8 in TF32 and bf16, ACT at a trained
# model's cluster counts (the demo model's per-layer ratios at act:L=32,r=3) against exact at
# batch 1 and 8, and the training step at batch 4 (attention_training=fused, the default:
# dropout and gradient in the attention kernels). Writes $OUT/<group>.json and .log.
# xla_train: the training step with attention_training=xla (attention dropout and the
# gradient on XLA ops) and benchmarks/flash_training.py (one layer's attention, forward
# and backward, the three ways).
#   bash benchmarks/device/regression.sh [infer] [act] [train] [xla_train]
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
dc5=(--config configs/detr_r50_dc5.py --size 800x1216)
ratios="${RATIOS:-0.707/0.636/0.617/0.625/0.624/0.567}"
run() {  # group, script, arguments...
  local name="$1" script="$2"; shift 2
  python3 $script --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  grep -E "^\| (infer|train)|rror" "$out/$name.log" | tail -8
  echo "-- $name done at $(elapsed) s"
}
for group in ${@:-infer act train}; do
  case "$group" in
    infer) run infer "-m detr_jax.benchmark" "${dc5[@]}" --mode infer --batch 1 8 \
             --precision default bf16 --repeats 20 ;;
    act)   run act benchmarks/forced_act.py "${dc5[@]}" --mode infer --batch 1 8 --repeats 20 \
             --attention exact "act_forced:L=32,r=3,ratios=$ratios" ;;
    train) run train "-m detr_jax.benchmark" "${dc5[@]}" --mode train --batch 4 --warmup 3 \
             --repeats 15 ;;
    xla_train)
      run xla_train "-m detr_jax.benchmark" "${dc5[@]}" --mode train --batch 4 --warmup 3 \
        --repeats 15 --config.model.attention_training=xla
      python3 benchmarks/flash_training.py --batch 4 --json "$out/flash_training.json" 2>&1 \
        | grep -E "ms|rror" ;;
    *) echo "unknown group $group (infer act train xla_train)"; exit 2 ;;
  esac
done
