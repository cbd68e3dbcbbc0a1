#!/usr/bin/env bash
# Train (or resume) the bundled demo model on a GPU machine within a wall-clock budget.
#   bash benchmarks/device/train_demo.sh SECONDS [--config.x=y ...]
# Generates the synthetic benchmark (8000 train / 300 val images), resumes from
# carry/demo_run/ckpt.tar.part-* if present, trains until done or until SIGTERM at SECONDS
# (evaluating on the val split every train.eval_every steps), and writes to $OUT the
# exported model (demo_model.tar) and the training checkpoint split into parts for the
# next call.
set -euo pipefail
budget="${1:-480}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD
fi
start=$(date +%s)
python3 -m detr_jax.data.synthetic --output /tmp/syn --train 8000 --val 300 --workers 16
echo "generated the synthetic benchmark in $(( $(date +%s) - start )) s"
rm -rf /tmp/run && mkdir -p /tmp/run  # a warm machine keeps the last call's files
if ls carry/demo_run/ckpt.tar.part-* >/dev/null 2>&1; then
  cat carry/demo_run/ckpt.tar.part-* | tar -x -C /tmp/run
  cp carry/demo_run/metrics.jsonl /tmp/run/ 2>/dev/null || true
  echo "resuming from $(ls /tmp/run/checkpoints)"
fi
set +e
timeout -s TERM "$budget" python3 train.py --config configs/synthetic_demo.py --workdir /tmp/run \
  --config.data.train_annotations=/tmp/syn/annotations/instances_train.json \
  --config.data.train_images=/tmp/syn/train \
  --config.data.val_annotations=/tmp/syn/annotations/instances_val.json \
  --config.data.val_images=/tmp/syn/val --no-progress "${@:2}"
echo "train.py exit code $?"
set -e
tar -C /tmp/run -cf "$out/demo_model.tar" model model_config.json
cp /tmp/run/metrics.jsonl "$out/metrics.jsonl"
latest=$(ls /tmp/run/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
tar -C /tmp/run -cf - "checkpoints/$latest" | split -b 15M - "$out/ckpt.tar.part-"
ls -la "$out"
