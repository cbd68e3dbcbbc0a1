#!/usr/bin/env bash
# Attention kernels: ACT pieces and the encoder benchmark, XLA against the fused kernel.
set -uo pipefail
out="${OUT:-/tmp/out}"; mkdir -p "$out"
pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
python3 benchmarks/act_profile.py --batches 1,8 --output "$out/act_profile.json" 2>&1 | grep -v Warning
python3 benchmarks/encoder_attention.py --batches 1,8 --reps 30 --output "$out/encoder_attention.json" 2>&1 \
  | grep -v Warning | tail -40
