#!/usr/bin/env bash
# Train (or resume) the bundled demo model on a GPU machine within a wall-clock budget.
#   bash benchmarks/device/train_demo.sh SECONDS [--config.x=y ...]
# Generates the synthetic benchmark (8000 train / 300 val images) unless this warm machine
# already has it, then resumes from (in order) the warm machine's /tmp/run, or
# carry/demo_run/ckpt.tar.part-*, or starts a new run from a backbone pretrained on object
# crops (detr_jax.training.backbone_pretrain). Trains until done or until SIGTERM at
# SECONDS (evaluating on the val split every train.eval_every steps) and writes to $OUT
# the exported model (demo_model.tar), metrics.jsonl and the training checkpoint split
# into parts for the next call.
set -euo pipefail
budget="${1:-480}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site:$PWD
fi
start=$(date +%s)
stamp=$(sha1sum detr_jax/data/synthetic.py | cut -c1-12)
if [ "$(cat /tmp/syn/stamp 2>/dev/null)" != "$stamp" ]; then
  rm -rf /tmp/syn
  python3 -m detr_jax.data.synthetic --output /tmp/syn --train 8000 --val 300 --workers 16
  echo "$stamp" > /tmp/syn/stamp
  echo "generated the synthetic benchmark in $(( $(date +%s) - start )) s"
fi
data=(--config.data.train_annotations=/tmp/syn/annotations/instances_train.json
      --config.data.train_images=/tmp/syn/train
      --config.data.val_annotations=/tmp/syn/annotations/instances_val.json
      --config.data.val_images=/tmp/syn/val)
init=()
if ls /tmp/run/checkpoints 2>/dev/null | grep -qE '^[0-9]+$'; then
  echo "resuming from this machine's /tmp/run ($(ls /tmp/run/checkpoints | tr '\n' ' '))"
elif ls carry/demo_run/ckpt.tar.part-* >/dev/null 2>&1; then
  rm -rf /tmp/run && mkdir -p /tmp/run
  cat carry/demo_run/ckpt.tar.part-* | tar -x -C /tmp/run
  cp carry/demo_run/metrics.jsonl /tmp/run/ 2>/dev/null || true
  echo "resuming from the carried checkpoint $(ls /tmp/run/checkpoints)"
else
  rm -rf /tmp/run /tmp/backbone && mkdir -p /tmp/run
  python3 -m detr_jax.training.backbone_pretrain --config configs/synthetic_demo.py \
    --output /tmp/backbone "${data[@]}" 2>&1 | grep -v "^backbone pretraining step [0-9]*[1-9]00/"
  init=(--config.train.init_backbone=/tmp/backbone)
fi
set +e
timeout -s TERM "$(( budget - ($(date +%s) - start) ))" python3 train.py \
  --config configs/synthetic_demo.py --workdir /tmp/run "${data[@]}" "${init[@]}" --no-progress "${@:2}"
echo "train.py exit code $?"
set -e
tar -C /tmp/run -cf "$out/demo_model.tar" model model_config.json 2>/dev/null || echo "no exported model yet"
cp /tmp/run/metrics.jsonl "$out/metrics.jsonl"
latest=$(ls /tmp/run/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
tar -C /tmp/run -cf - "checkpoints/$latest" | split -b 15M - "$out/ckpt.tar.part-"
ls -la "$out"
