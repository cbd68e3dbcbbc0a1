#!/usr/bin/env bash
# Profiling: ACT pieces, demo training step, loader throughput.
set -uo pipefail
out="${OUT:-/tmp/out}"; mkdir -p "$out"
pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 benchmarks/act_profile.py --batches 1,8 --output "$out/act_profile.json" 2>&1 | grep -v Warning
python3 -m detr_jax.data.synthetic --output /tmp/syn --train 2000 --val 10 --workers 16 >/dev/null
O="--config.data.train_annotations=/tmp/syn/annotations/instances_train.json --config.data.train_images=/tmp/syn/train"
python3 benchmarks/loader_throughput.py --config configs/synthetic_demo.py $O --config.train.num_workers=16 --batches 30
python3 -m detr_jax.benchmark --config configs/synthetic_demo.py --mode train --batch 32 --size 384x512 \
  --precision default bf16 --boxes 7 --repeats 10 --json "$out/demo_train.json" 2>&1 | tail -3
python3 -m detr_jax.benchmark --config configs/synthetic_demo.py --mode train --batch 32 --size 384x512 \
  --boxes 7 --repeats 10 --config.train.matcher=optax 2>&1 | tail -1
