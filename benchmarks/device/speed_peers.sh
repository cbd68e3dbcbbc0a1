#!/usr/bin/env bash
# DETR-DC5 R50 inference at 800x1216 on GPU $GPU (default 0), in groups:
#   peers    Hugging Face's DetrForObjectDetection beside ours (benchmarks/peers.py, batch 8)
#   profile  device profiles of our batch-8 forward pass, TF32 and bf16 (kernel_profile.py)
#   flags    batch 8, TF32 and bf16, under each of $VARIANTS (XLA_FLAGS values, | separated;
#            "base" = none) and with the cuDNN attention kernel
#   targets  batch 1 (TF32, bf16) and batch 32 (bf16)
#   train_profile  device profile of the DC5 training step at batch 4 (TF32, kernel_profile.py --mode train)
#   GPU=0 bash benchmarks/device/speed_peers.sh [peers] [profile] [flags] [targets] [train_profile]
# -> $OUT/peers.json, peers.log, profile.tar, flags.tar, targets.json, train_profile.json
set -uo pipefail
source benchmarks/device/common.sh
export CUDA_VISIBLE_DEVICES="${GPU:-0}"
nvidia-smi -L | sed -n "$(( ${GPU:-0} + 1 ))p"
for group in ${@:-peers profile}; do
  case "$group" in
    peers)
      python3 benchmarks/peers.py --batch ${BATCHES:-8} --precision tf32 bf16 --repeats "${REPEATS:-20}" \
        --json "$out/peers.json" > "$out/peers.log" 2>&1
      grep -E "^\||rror" "$out/peers.log" | tail -12 ;;
    profile)
      mkdir -p /tmp/profile
      for p in tf32 bf16; do
        dtype=$([ $p = bf16 ] && echo bfloat16 || echo float32)
        python3 benchmarks/kernel_profile.py --config configs/detr_r50_dc5.py --batch 8 --reps 10 \
          --config.model.dtype=$dtype --output "/tmp/profile/profile_$p.json" > "/tmp/profile/profile_$p.log" 2>&1
        grep -E "ms of device|rror" "/tmp/profile/profile_$p.log"
      done
      tar -C /tmp -cf "$out/profile.tar" profile ;;
    flags)
      mkdir -p /tmp/flags
      IFS='|' read -r -a variants <<< "${VARIANTS:-base|--xla_gpu_enable_command_buffer=|--xla_gpu_graph_min_graph_size=1|--xla_gpu_enable_triton_gemm=false|--xla_gpu_enable_cublaslt=true}"
      i=0
      for v in "${variants[@]}" cudnn; do
        flags=$([ "$v" = base ] || [ "$v" = cudnn ] || echo "$v")
        kernel=$([ "$v" = cudnn ] && echo cudnn || echo auto)
        echo "$v" > "/tmp/flags/variant_$i.txt"
        XLA_FLAGS="$flags" python3 -m detr_jax.benchmark --config configs/detr_r50_dc5.py --mode infer \
          --batch 8 --precision default bf16 --size 800x1216 --repeats "${REPEATS:-20}" \
          --attention-kernel "$kernel" --json "/tmp/flags/flags_$i.json" > "/tmp/flags/flags_$i.log" 2>&1
        echo "## $v"; grep -E "^\| infer|rror" "/tmp/flags/flags_$i.log"
        i=$((i + 1))
      done
      tar -C /tmp -cf "$out/flags.tar" flags ;;
    targets)
      python3 -m detr_jax.benchmark --config configs/detr_r50_dc5.py --mode infer --batch 1 \
        --precision default bf16 --size 800x1216 --repeats "${REPEATS:-20}" --json "$out/targets_b1.json" 2>&1 | grep -E "^\| infer|rror"
      python3 -m detr_jax.benchmark --config configs/detr_r50_dc5.py --mode infer --batch 32 \
        --precision bf16 --size 800x1216 --repeats "${REPEATS:-20}" --json "$out/targets_b32.json" 2>&1 | grep -E "^\| infer|rror" ;;
    train_profile)
      python3 benchmarks/kernel_profile.py --config configs/detr_r50_dc5.py --mode train --batch 4 \
        --reps 5 --top 40 --output "$out/train_profile.json" > "$out/train_profile.log" 2>&1
      grep -E "ms of device|rror" "$out/train_profile.log" ;;
    *) echo "unknown group $group (peers profile flags targets train_profile)"; exit 2 ;;
  esac
  echo "-- $group done at $(elapsed) s"
done
