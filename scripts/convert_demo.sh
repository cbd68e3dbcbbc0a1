#!/usr/bin/env bash
# Offline conversion demo: build official-layout DETR-DC5 weights from the fixture recipe (random,
# no download), convert them with convert_torch_weights.py, and run eval.py on a built-in
# example image with exact attention (and every other setting given as arguments).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
work="${DETR_JAX_DEMO_DIR:-work/demo}"
mkdir -p "$work"
python -m detr_jax.demo_assets --output-dir "$work"
set -x
python convert_torch_weights.py --checkpoint "$work/detr-r50-dc5-recipe.pth" \
  --output "$work/detr-r50-dc5" --overwrite
python eval.py --checkpoint "$work/detr-r50-dc5" --images "$work/example.jpg" \
  --output-dir "$work/predictions" --threshold 0.0 --attention exact "$@"
