#!/usr/bin/env bash
# Zero-shot encoder attentions on the bundled demo model (models/demo) over the synthetic
# validation split (300 images, generated here), on one GPU: one eval.py call per group in
# $SWEEP_GROUPS (default "after"), each writing $OUT/<group>.md (the report) and <group>.json.
#   SETTINGS="exact act:L=32,r=8 ..." SEEDS=3 bash benchmarks/device/demo_sweep.sh
#   BEFORE=.before SWEEP_GROUPS="before after" ...   # also the tree in .before (git archive of an
#                                              # older commit, carried) with BEFORE_SETTINGS
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
if [ ! -f /tmp/synval/annotations/instances_val.json ]; then
  python3 -m detr_jax.data.synthetic --output /tmp/synval --train 0 --val 300 --workers 16
fi
data=(--annotations /tmp/synval/annotations/instances_val.json --image-root /tmp/synval/val)
for group in ${SWEEP_GROUPS:-after}; do
  if [ "$group" = before ]; then
    (cd "$BEFORE" && PYTHONPATH=/tmp/site:$PWD python3 eval.py --checkpoint "$OLDPWD/models/demo" \
      --config configs/synthetic_demo.py "${data[@]}" --output-dir /tmp/eval_before \
      --no-progress --attention ${BEFORE_SETTINGS:-exact} > "$out/before.log" 2>&1)
    dir=/tmp/eval_before
  else
    python3 eval.py --checkpoint models/demo --config configs/synthetic_demo.py "${data[@]}" \
      --output-dir "/tmp/eval_$group" --no-progress --hash-seeds "${SEEDS:-3}" \
      --attention ${SETTINGS:-exact} > "$out/$group.log" 2>&1
    dir="/tmp/eval_$group"
  fi
  tail -12 "$out/$group.log"
  cp "$dir"/report.md "$out/$group.md" 2>/dev/null
  cp "$(ls "$dir"/*.json | head -1)" "$out/$group.json" 2>/dev/null
  echo "-- $group done at $(elapsed) s"
done
