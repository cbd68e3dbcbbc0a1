#!/usr/bin/env bash
# Train (or resume) the bundled demo model on a GPU machine within a wall-clock budget.
#   bash benchmarks/device/train_demo.sh SECONDS
# Generates the synthetic benchmark, resumes from carry/demo_run/ckpt.tar.part-* if
# present, trains until done or until SIGTERM at SECONDS, and writes to $OUT the exported
# model (demo_model.tar) and the training checkpoint split into parts for the next call.
set -euo pipefail
budget="${1:-480}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
python3 -m detr_jax.data.synthetic --output /tmp/syn --train 8000 --val 300 --workers 16
mkdir -p /tmp/run
if ls carry/demo_run/ckpt.tar.part-* >/dev/null 2>&1; then
  cat carry/demo_run/ckpt.tar.part-* | tar -x -C /tmp/run
  echo "resuming from $(ls /tmp/run/checkpoints)"
fi
set +e
timeout -s TERM "$budget" python3 train.py --config configs/synthetic_demo.py --workdir /tmp/run \
  --config.data.train_annotations=/tmp/syn/annotations/instances_train.json \
  --config.data.train_images=/tmp/syn/train --no-progress "${@:2}"
echo "train.py exit code $?"
set -e
tar -C /tmp/run -cf "$out/demo_model.tar" model model_config.json metrics.jsonl
latest=$(ls /tmp/run/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
tar -C /tmp/run -cf - "checkpoints/$latest" | split -b 15M - "$out/ckpt.tar.part-"
ls -la "$out"
