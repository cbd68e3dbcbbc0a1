#!/usr/bin/env bash
# DETR, Conditional DETR and Anchor DETR (and each with ENACT) trained on the synthetic
# benchmark with one recipe and budget, from one backbone pretrained on object crops;
# then the ENACT paper's Table 1/2 figures of each (training step time and peak memory,
# inference time) and ACT zero-shot on the trained Conditional DETR.
#   RUNS="detr conditional anchor" GPU=1 bash benchmarks/device/detector_compare.sh SECONDS
# Runs in $RUNS train at the same time on GPU $GPU (small models: the GPU has room, the
# data workers share the CPUs; WORKERS per run, default a half of the CPUs split). Each trains EPOCHS epochs (default 6, learning rate /10 for
# the last third), evaluating on the 300 val images every epoch. The backbone comes from
# carry/backbone.tar when carried, else it is pretrained here. Afterwards each run's
# exported model is timed (python -m detr_jax.benchmark, trained weights, batch 1 and 8
# inference at batch 8, batch 32 training step at 512x512) and, for conditional, evaluated with ACT.
# PHASE=train stops after training (the runs stay in /tmp/cmp_<run> of the warm machine);
# PHASE=time does only what follows training, on those runs; default: both.
# -> $OUT/compare_<first run>.tar (per run: metrics.jsonl, train.log,
#    bench.json, act report), $OUT/backbone.tar when pretrained here
set -uo pipefail
budget="${1:-560}"
source benchmarks/device/common.sh
gpu="${GPU:-0}"
phase="${PHASE:-all}"
backbone="/tmp/backbone_gpu$gpu"  # one per GPU: two instances may run side by side
epochs="${EPOCHS:-6}"
read -r -a runs <<< "${RUNS:-detr conditional anchor}"
workers="${WORKERS:-$(( $(nproc) / (2 * ${#runs[@]}) ))}"
declare -A config=([detr]=configs/synthetic_demo.py [conditional]=configs/conditional_detr_synthetic.py
                   [anchor]=configs/anchor_detr_synthetic.py
                   [detr_enact]=configs/synthetic_demo.py
                   [conditional_enact]=configs/conditional_detr_synthetic.py
                   [anchor_enact]=configs/anchor_detr_synthetic.py)
declare -A attention=([detr]=exact [conditional]=exact [anchor]=exact [detr_enact]=enact:sigma=3
                      [conditional_enact]=enact:sigma=3 [anchor_enact]=enact:sigma=5)
export CUDA_VISIBLE_DEVICES="$gpu"
# the runs share the GPU: each takes its part of the memory instead of JAX's default 75%
export XLA_PYTHON_CLIENT_MEM_FRACTION="$(python3 -c "print(round(0.9 / ${#runs[@]}, 2))")"
make_synthetic
if [ "$phase" != time ]; then
if [ -f carry/backbone.tar ]; then
  rm -rf "$backbone" && mkdir -p "$backbone" && tar -C "$backbone" -xf carry/backbone.tar
elif [ ! -f "$backbone/config.json" ]; then
  pretrain_backbone configs/synthetic_demo.py "$backbone" "$out/backbone.tar"
fi
echo "backbone ready at $(elapsed) s; training ${runs[*]} on GPU $gpu with $workers workers each"
recipe=(--config.train.epochs="$epochs" "--config.train.lr_drop_epochs=($(( epochs * 2 / 3 )),)"
        --config.train.eval_every=250 --config.train.checkpoint_every=100000
        --config.train.num_workers="$workers" --config.train.init_backbone="$backbone"
        --config.train.compilation_cache=/tmp/jax_cache --no-progress)
reserve=$([ "$phase" = train ] && echo 40 || echo 200)  # seconds kept for what follows training
left() { echo $(( budget - $(elapsed) )); }
pids=()
for run in "${runs[@]}"; do
  dir="/tmp/cmp_$run"; rm -rf "$dir"; mkdir -p "$dir"
  att="${attention[$run]}"
  timeout -s TERM "$(( $(left) - reserve ))" python3 train.py --config "${config[$run]}" --workdir "$dir" \
    "${SYN_DATA[@]}" "${recipe[@]}" --config.model.encoder_attention="$att" \
    "--config.eval.attention=('$att',)" > "$dir/train.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; echo "${runs[$i]}: train.py exit $? at $(elapsed) s"
  grep -E "eval at step|error|Error" "/tmp/cmp_${runs[$i]}/train.log" | tail -8
done
fi
[ "$phase" = train ] && exit 0
for run in "${runs[@]}"; do
  dir="/tmp/cmp_$run"; att="${attention[$run]}"
  [ -d "$dir/model" ] || { echo "$run: no exported model"; continue; }
  tar -C "$dir" -cf "$dir/model.tar" model model_config.json 2>/dev/null
  python3 -m detr_jax.benchmark --config "${config[$run]}" --config.model.encoder_attention="$att" \
    --mode train --attention "$att" --batch 32 --size 512x512 --boxes 7 --repeats 10 \
    --json "$dir/bench_train.json" 2>&1 | grep "^| train"
  python3 -m detr_jax.benchmark --config "${config[$run]}" --checkpoint "$dir/model" --mode infer \
    --attention "$att" --batch 8 --size 512x512 --repeats 20 --json "$dir/bench_infer.json" \
    2>&1 | grep "^| infer"
  if [ "$run" = conditional ] && [ "${ACT_EVAL:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
    python3 eval.py --checkpoint "$dir/model" --config "${config[$run]}" "${SYN_VAL[@]}" \
      --output-dir "$dir/act" --no-progress --hash-seeds 3 \
      --attention exact act:L=32 act:L=24 act:L=16 > "$dir/act.log" 2>&1
    tail -12 "$dir/act.log"
  fi
  echo "$run timed at $(elapsed) s"
done
tar -C /tmp -cf "$out/compare_${runs[0]}.tar" \
  $(for run in "${runs[@]}"; do
      for f in metrics.jsonl train.log bench_train.json bench_infer.json act.log act/report.md; do
        [ -e "/tmp/cmp_$run/$f" ] && echo "cmp_$run/$f"
      done
    done)
ls -la "$out"
