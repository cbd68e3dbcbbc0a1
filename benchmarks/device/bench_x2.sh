#!/usr/bin/env bash
# Training-step throughput on one GPU and on two (same per-device batch), on a 2-GPU
# machine (nvidia-h200-x2), plus the single-GPU training rows of the DETR vs DETR+ENACT
# comparison. Random inputs (python -m detr_jax.benchmark --mode train), medians.
#   bash benchmarks/device/bench_x2.sh [GROUP ...]   -> $OUT/*.json, printed tables
# GROUPs, run in the order given: demo demo64 enact dc5 r50 (default: demo enact dc5 r50,
# more than one 10-minute call), and dist: why two GPUs are not 2x (NCCL's transport between the GPUs, and the demo step
# on two GPUs with XLA's latency-hiding scheduler, which overlaps the gradient all-reduce)
set -euo pipefail
source benchmarks/device/common.sh
nvidia-smi -L
bench() {  # name, visible GPUs, benchmark arguments... (full log in $OUT/<name>.log)
  local name="$1" gpus="$2"; shift 2
  CUDA_VISIBLE_DEVICES="$gpus" python3 -m detr_jax.benchmark --mode train --warmup 3 \
    --repeats 15 --json "$out/$name.json" "$@" > "$out/$name.log" 2>&1
  grep -E "^\||error|Error" "$out/$name.log" | tail -3
  echo "-- $name done at $(elapsed) s"
}
demo=(--config configs/synthetic_demo.py --size 512x512 --boxes 7)
run_group() {
  case "$1" in
    demo)
      bench demo_1gpu 0 "${demo[@]}" --batch 32
      bench demo_2gpu 0,1 "${demo[@]}" --batch 64 ;;
    demo64)  # 64 images per GPU; NCCL's set-up lines (transport between the GPUs) in the log
      nvidia-smi topo -m > "$out/topo.txt" 2>&1 || true
      bench demo64_1gpu 0 "${demo[@]}" --batch 64
      NCCL_DEBUG=INFO bench demo64_2gpu 0,1 "${demo[@]}" --batch 128 ;;
    enact)
      bench enact_1gpu 0 "${demo[@]}" --batch 32 --attention exact enact:sigma=3
      bench enact_1gpu_xla 0 "${demo[@]}" --batch 32 --attention exact enact:sigma=3 --attention-kernel xla ;;
    dc5)
      bench dc5_1gpu 0 --config configs/detr_r50_dc5.py --size 800x1216 --batch 4
      bench dc5_2gpu 0,1 --config configs/detr_r50_dc5.py --size 800x1216 --batch 8 ;;
    r50)
      bench r50_1gpu 0 --config configs/detr_r50.py --size 800x1216 --batch 4
      bench r50_2gpu 0,1 --config configs/detr_r50.py --size 800x1216 --batch 8 ;;
    dist)
      # written to $OUT too: console output is lost when a call hits its time limit
      { nvidia-smi topo -m || true
        NCCL_DEBUG=INFO CUDA_VISIBLE_DEVICES=0,1 python3 -m detr_jax.benchmark --mode train \
          --warmup 1 --repeats 3 "${demo[@]}" --batch 64 2>&1 \
          | grep -E "NCCL INFO (Channel|Connected|comm)| via |^\|" | head -30 || true
      } | tee "$out/dist.txt"
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true" \
        bench demo_2gpu_lhs 0,1 "${demo[@]}" --batch 64 ;;
    *) echo "unknown group $1 (demo demo64 enact dc5 r50 dist)"; exit 2 ;;
  esac
}
for group in ${@:-demo enact dc5 r50}; do run_group "$group"; done
