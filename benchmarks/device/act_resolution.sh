#!/usr/bin/env bash
# Exact encoder attention against ACT at a trained model's prototype ratios, DETR-DC5 R50
# inference across input sizes (random weights; ACT's counts forced to $RATIOS, the demo
# model's per-layer ratios at r = 3, by benchmarks/forced_act.py):
#   SIZES="800x1216 1088x1664 1333x2000 1600x2432" BATCHES="1" bash benchmarks/device/act_resolution.sh
# -> $OUT/act_res_<size>.json per size (rows of python -m detr_jax.benchmark); plot and
#    table with: python benchmarks/act_resolution_plot.py $OUT/act_res_*.json --output act_resolution.png
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
ratios="${RATIOS:-0.707/0.636/0.617/0.625/0.624/0.567}"
for size in ${SIZES:-800x1216 1088x1664 1333x2000 1600x2432}; do
  python3 benchmarks/forced_act.py --config configs/detr_r50_dc5.py --size "$size" --mode infer \
    --batch ${BATCHES:-1} --repeats "${REPEATS:-20}" \
    --attention exact "act_forced:L=32,r=8,ratios=$ratios" \
    --json "$out/act_res_$size.json" > "$out/act_res_$size.log" 2>&1
  grep -E "^\| infer|rror" "$out/act_res_$size.log" | sort -u
  echo "-- $size done at $(elapsed) s"
done
