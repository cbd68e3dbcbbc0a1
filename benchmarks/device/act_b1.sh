#!/usr/bin/env bash
# Why ACT is not faster than exact attention at batch 1, on one GPU:
# 1. device time per kernel of the DETR-DC5 forward pass at 800x1216, batch 1, exact
#    against ACT (random weights; r=2 keeps 6-57% of the tokens per layer)
# 2. ACT's pieces at N/2 and N/64 prototypes, with the atomic-free numbering + means
#    candidate (benchmarks/act_profile.py)
# 3. the fused kernel's tile sizes at batch 1 and 8, all rows and ragged N/2, N/4, N/8
#   bash benchmarks/device/act_b1.sh   -> $OUT/kernels.*, act_profile.*, flash_tiles.*
set -uo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
python3 benchmarks/kernel_profile.py --config configs/detr_r50_dc5.py --attention exact act:L=32,r=2 \
  --batch 1 --size 800x1216 --reps 10 --top 30 --output "$out/kernels.json" > "$out/kernels.log" 2>&1
grep -v Warning "$out/kernels.log" | tail -70
echo "-- kernel profile done at $(elapsed) s"
python3 benchmarks/act_profile.py --batches 1,8 --divisors 2,64 --output "$out/act_profile.json" \
  > "$out/act_profile.log" 2>&1
grep -v Warning "$out/act_profile.log" | tail -40
echo "-- ACT pieces done at $(elapsed) s"
python3 benchmarks/flash_tiles.py --batches 1,8 --output "$out/flash_tiles.json" > "$out/flash_tiles.log" 2>&1
tail -12 "$out/flash_tiles.log"
echo "-- tiles done at $(elapsed) s"
