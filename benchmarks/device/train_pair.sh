#!/usr/bin/env bash
# Two synthetic-benchmark trainings side by side, one per GPU on a machine of two GPUs,
# both on the one GPU of a machine with one (each then at about half its speed alone),
# each through train_demo.sh (so each resumes from this warm machine's /tmp/RUN in the
# next call, and stops at SECONDS with a checkpoint).
#   bash benchmarks/device/train_pair.sh SECONDS RUN=CONFIG[@ATTENTION] RUN=CONFIG[@ATTENTION] [--config.x=y ...]
# e.g. Anchor DETR with and without ENACT at the demo's stage-1 budget, from one carried
# backbone (carry/backbone.tar):
#   bash benchmarks/device/train_pair.sh 585 anchor_demo=configs/anchor_detr_synthetic.py \
#       anchor_enact_demo=configs/anchor_detr_synthetic.py@enact:sigma=5
# ATTENTION sets the encoder attention for training and evaluation. Each run gets half the
# CPUs less one as data workers; the overrides after the two runs apply to both. The
# synthetic benchmark is generated once, before either starts, and so is the backbone:
# carry/backbone.tar when carried, else pretrained here once (on GPU 0, written to
# $OUT/backbone.tar); each run unpacks its own copy of it. -> $OUT/RUN.log,
# $OUT/RUN_metrics.jsonl and $OUT/RUN_model.tar (the exported model, once the run has one)
# for both runs. Then time them: benchmarks/device/time_trained.sh with the same RUN specs.
set -uo pipefail
budget="${1:?usage: train_pair.sh SECONDS RUN=CONFIG[@ATTENTION] RUN=CONFIG[@ATTENTION] [overrides]}"
first="${2:?two runs}"; second="${3:?two runs}"
shift 3
source benchmarks/device/common.sh
make_synthetic
final_out="$out"
shared_tar=carry/backbone.tar
if [ ! -f "$shared_tar" ]; then  # one backbone for both runs, pretrained once per machine
  shared_tar=/tmp/backbone_shared.tar
  if [ ! -f "$shared_tar" ]; then
    first_config="${first#*=}"; first_config="${first_config%%@*}"
    CUDA_VISIBLE_DEVICES=0 pretrain_backbone "$first_config" /tmp/backbone_shared "$shared_tar" \
      && cp "$shared_tar" "$final_out/backbone.tar"
  fi
fi
echo "backbone: $shared_tar ($(elapsed) s)"
workers=$(( $(nproc) / 2 - 1 )); [ "$workers" -ge 1 ] || workers=1
gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU"); [ "$gpus" -ge 1 ] || gpus=1
# two processes on one GPU: each may take under half of its memory (JAX takes 75% by
# default); PAIR_MEM_FRACTION lowers it to leave room for other work beside them
[ "$gpus" -ge 2 ] || export XLA_PYTHON_CLIENT_MEM_FRACTION="${PAIR_MEM_FRACTION:-0.45}"
pids=(); names=()
gpu=0
for spec in "$first" "$second"; do
  parse_run "$spec"; name="$run_name"; config="$run_config"; attention="$run_attention"
  extra=()
  if [ -n "$attention" ]; then
    extra=(--config.model.encoder_attention="$attention" "--config.eval.attention=('$attention',)")
  fi
  CUDA_VISIBLE_DEVICES=$gpu OUT="/tmp/out_$name" RUN="$name" CONFIG="$config" \
    BACKBONE_DIR="/tmp/backbone_$name" BACKBONE_TAR="$shared_tar" \
    bash benchmarks/device/train_demo.sh "$(( budget - $(elapsed) ))" \
    --config.train.num_workers="$workers" "${extra[@]}" "$@" > "$final_out/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
  echo "$name: $config ${attention:+($attention) }on GPU $gpu, $workers workers"
  gpu=$(( (gpu + 1) % gpus ))
done
for i in 0 1; do
  wait "${pids[$i]}"; name="${names[$i]}"
  echo "$name: done at $(elapsed) s"
  cp "/tmp/out_$name/metrics.jsonl" "$final_out/${name}_metrics.jsonl" 2>/dev/null
  cp "/tmp/out_$name/model.tar" "$final_out/${name}_model.tar" 2>/dev/null
  grep -E "resum|eval at step|exit code|rror" "$final_out/$name.log" | tail -12
  grep -E "^step [0-9]+/" "$final_out/$name.log" | tail -1
done
ls -la "$final_out"
