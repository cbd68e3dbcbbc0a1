#!/usr/bin/env bash
# End-to-end DETR-DC5 R50 inference at 800x1216 (random weights); docs/performance.md has the official figures.
#   bash benchmarks/device/bench_dc5.sh [extra benchmark flags]
set -uo pipefail
out="${OUT:-/tmp/out}"; mkdir -p "$out"
pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 -m detr_jax.benchmark --config configs/detr_r50_dc5.py --mode infer --attention exact \
  --batch 1 8 --precision default bf16 --size 800x1216 --repeats 20 --json "$out/dc5_infer.json" "$@" 2>&1 | grep -v Warning | tail -6
