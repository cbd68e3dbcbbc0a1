#!/usr/bin/env bash
# Training throughput of the two input pipelines ("threads": TrainLoader; "grain":
# GrainTrainLoader) with the DETR-DC5 R50 model at 4 images per GPU on COCO-sized images
# (multi-scale resize and random crop as configs/mtkd_detr_r50_dc5.py, MTKD off, random
# weights), every batch padded to one shape so the step compiles once:
#   bash benchmarks/device/pipeline_throughput.sh [STEPS] [WORKERS]
# -> $OUT/pipeline_<name>.jsonl (metrics.jsonl of each run); the images/s of the logged
#    windows after the first are printed per pipeline.
set -uo pipefail
steps="${1:-120}"
workers="${2:-12}"
source benchmarks/device/common.sh
[ -f /tmp/coco_like/annotations/instances_train2017.json ] || \
  python3 benchmarks/device/make_coco_like.py --output /tmp/coco_like --images 1000 --split train2017
for pipe in threads grain; do
  dir="/tmp/pipe_$pipe"; rm -rf "$dir"
  python3 train.py --config configs/mtkd_detr_r50_dc5.py --workdir "$dir" \
    --config.mtkd.enabled=False --config.train.init_checkpoint= \
    --config.data.train_annotations=/tmp/coco_like/annotations/instances_train2017.json \
    --config.data.train_images=/tmp/coco_like/train2017 --config.data.pipeline="$pipe" \
    --config.train.per_device_batch=4 "--config.train.pad_to=(1344,1344)" \
    --config.train.num_steps="$steps" --config.train.log_every=20 \
    --config.train.num_workers="$workers" --config.train.eval_every=0 \
    --config.train.checkpoint_every=100000 --config.train.compilation_cache=/tmp/jax_cache \
    --no-progress > "$dir.log" 2>&1
  echo "$pipe: train.py exit $? at $(elapsed) s"; grep -E "Error|error" "$dir.log" | tail -3
  cp "$dir/metrics.jsonl" "$out/pipeline_$pipe.jsonl" 2>/dev/null
  python3 - "$dir/metrics.jsonl" "$pipe" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"images_per_s"' in l]
rates = [r["images_per_s"] for r in rows[1:]]  # the first window holds the compile
print(f"{sys.argv[2]}: {len(rates)} windows after the first, images/s median "
      f"{statistics.median(rates):.1f} (min {min(rates):.1f}, max {max(rates):.1f})")
PY
done
