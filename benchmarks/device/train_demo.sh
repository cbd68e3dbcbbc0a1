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
source benchmarks/device/common.sh
make_synthetic
init=()
if ! resume_from carry/demo_run /tmp/run; then
  rm -rf /tmp/run /tmp/backbone && mkdir -p /tmp/run
  python3 -m detr_jax.training.backbone_pretrain --config configs/synthetic_demo.py \
    --output /tmp/backbone "${SYN_DATA[@]}" 2>&1 | grep -v "^backbone pretraining step [0-9]*[1-9]00/"
  init=(--config.train.init_backbone=/tmp/backbone)
fi
set +e
timeout -s TERM "$(( budget - $(elapsed) ))" python3 train.py \
  --config configs/synthetic_demo.py --workdir /tmp/run "${SYN_DATA[@]}" "${init[@]}" --no-progress "${@:2}"
echo "train.py exit code $?"
set -e
tar -C /tmp/run -cf "$out/demo_model.tar" model model_config.json 2>/dev/null || echo "no exported model yet"
cp /tmp/run/metrics.jsonl "$out/metrics.jsonl"
pack_checkpoint /tmp/run
ls -la "$out"
