#!/usr/bin/env bash
# The ENACT paper's timing columns for models trained by train_pair.sh or train_demo.sh
# on this warm machine (TRAINED_ROOT/RUN/model, TRAINED_ROOT=/tmp by default): each
# model's inference on its trained weights (batch 1 and 8, 512 x 512, TF32, medians of 20
# calls) and, for each config, the training step of every attention of the runs in one
# process (random weights, batch 32, 512 x 512, 7 boxes per image, medians of 10 steps,
# with peak memory).
#   bash benchmarks/device/time_trained.sh RUN=CONFIG[@ATTENTION] [RUN=CONFIG[@ATTENTION] ...]
# e.g. after the Anchor DETR pair of train_pair.sh:
#   bash benchmarks/device/time_trained.sh anchor_demo=configs/anchor_detr_synthetic.py \
#       anchor_enact_demo=configs/anchor_detr_synthetic.py@enact:sigma=5
# -> $OUT/timings.tar (RUN_infer.json per run, CONFIG-NAME_train.json per config, timings.log)
set -uo pipefail
[ "$#" -ge 1 ] || { echo "usage: time_trained.sh RUN=CONFIG[@ATTENTION] ..." >&2; exit 2; }
source benchmarks/device/common.sh
root="${TRAINED_ROOT:-/tmp}"
dir="${TIMINGS_DIR:-/tmp/timings}"; rm -rf "$dir"; mkdir -p "$dir"
declare -A attentions=()
order=()
for spec in "$@"; do
  parse_run "$spec"; name="$run_name"; config="$run_config"; attention="${run_attention:-exact}"
  if [ ! -d "$root/$name/model" ]; then
    echo "error: $spec: no trained model in $root/$name/model on this machine" >&2; continue
  fi
  [ -n "${attentions[$config]:-}" ] || order+=("$config")
  attentions[$config]="${attentions[$config]:-} $attention"
  python3 -m detr_jax.benchmark --config "$config" --checkpoint "$root/$name/model" --mode infer \
    --attention "$attention" --batch 1 8 \
    --size 512x512 --repeats 20 --json "$dir/${name}_infer.json" 2>&1 \
    | tee -a "$dir/timings.log" | grep -E "^\| infer|rror"
  echo "$name: inference timed at $(elapsed) s"
done
for config in "${order[@]}"; do
  read -r -a list <<< "${attentions[$config]}"
  python3 -m detr_jax.benchmark --config "$config" --mode train --attention "${list[@]}" \
    --batch 32 --size 512x512 --boxes 7 --repeats 10 \
    --json "$dir/$(basename "$config" .py)_train.json" 2>&1 \
    | tee -a "$dir/timings.log" | grep -E "^\| train|rror"
  echo "$config: training step timed at $(elapsed) s"
done
tar -C "$dir" -cf "$out/timings.tar" .
