#!/usr/bin/env bash
# Conditional DETR R50 and Anchor DETR-DC5 R50 (the official parser's default is DC5): the official PyTorch code (eager and
# torch.compile) beside detr_jax, in one call, 800x1216, random weights: inference at batch
# 1 and 8 (TF32, bf16) and a training step at batch 4.
#   bash benchmarks/device/detector_peers.sh [conditional anchor]
# Needs the official repositories as carried folders: .peers/Atten4Vis+ConditionalDETR and
# .peers/megvii-research+AnchorDETR (git clones; not part of the project).
# -> $OUT/peers_<detector>.json (official rows), $OUT/ours_<detector>_{infer,train}.json
set -uo pipefail
source benchmarks/device/common.sh
declare -A repo=([conditional]=.peers/Atten4Vis+ConditionalDETR [anchor]=.peers/megvii-research+AnchorDETR)
declare -A config=([conditional]=configs/conditional_detr_r50.py [anchor]=configs/anchor_detr_r50_dc5.py)
for name in "${@:-conditional anchor}"; do
  echo "## $name: detr_jax ($(elapsed) s)"
  python3 -m detr_jax.benchmark --config "${config[$name]}" --mode infer --attention exact \
    --batch 1 8 --precision default bf16 --size 800x1216 --repeats "${REPEATS:-20}" \
    --json "$out/ours_${name}_infer.json" 2>&1 | grep "^| infer"
  python3 -m detr_jax.benchmark --config "${config[$name]}" --mode train --attention exact \
    --batch 4 --precision default --size 800x1216 --repeats "${REPEATS:-20}" --boxes 7 \
    --json "$out/ours_${name}_train.json" 2>&1 | grep "^| train"
  echo "## $name: official ($(elapsed) s)"
  python3 benchmarks/official_peers.py --repo "${repo[$name]}" --detector "$name" \
    --batch 1 8 --precision tf32 bf16 --train-batch 4 --repeats "${REPEATS:-20}" --json "$out/peers_$name.json" 2>&1 \
    | grep -v -i "warn" | tail -12
done
echo "done in $(elapsed) s"
