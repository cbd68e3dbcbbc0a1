#!/usr/bin/env bash
# Evaluate converted DETR-DC5 (recipe weights) on a COCO-like set on a GPU: exact vs ACT.
#   bash benchmarks/device/eval_dc5.sh [N_IMAGES] [extra eval.py args]
set -euo pipefail
n="${1:-60}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
python3 benchmarks/device/make_coco_like.py --output /tmp/coco_like --images "$n"
python3 -m detr_jax.demo_assets --output-dir /tmp/demo
python3 convert_torch_weights.py --checkpoint /tmp/demo/detr-r50-dc5-recipe.pth --output /tmp/ckpt --overwrite
python3 eval.py --checkpoint /tmp/ckpt --coco-dir /tmp/coco_like --config configs/detr_r50_dc5.py \
  --output-dir /tmp/eval --no-progress "${@:2}"
cp /tmp/eval/report.md /tmp/eval/report.csv /tmp/eval/*.png "$out/" 2>/dev/null || true
cat /tmp/eval/report.md
