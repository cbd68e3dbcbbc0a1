#!/usr/bin/env bash
# DETR vs DETR+ENACT with one recipe and budget, on a GPU machine, resumable:
#   bash benchmarks/device/enact_finetune.sh SECONDS [--config.x=y ...]
# Both start from the bundled demo model (models/demo; ENACT's entropy layers start fresh,
# see detr_jax.checkpoint.load_model_for_finetuning) and train the same number of steps
# with the same schedule (RECIPE below), exact with configs/synthetic_demo.py and ENACT
# with configs/enact_demo.py. Then each is evaluated on the val split (AP) and its
# inference is timed (python -m detr_jax.benchmark --mode infer on its trained weights).
# A run cut short by SECONDS leaves its checkpoint in $OUT as parts; carry them back as
# carry/ft_<name>/ckpt.tar.part-* (or call again on the warm machine) to resume.
# -> $OUT/ft_{exact,enact}_metrics.jsonl, _eval.json, _infer.json
# Environment: NAMES="exact enact" (which models to run), ENACT="enact:sigma=3" (ENACT's
# attention setting, e.g. enact:sigma=1 for more, shorter regions).
set -euo pipefail
budget="${1:-560}"
source benchmarks/device/common.sh
make_synthetic
recipe=(--config.train.init_checkpoint=models/demo --config.train.epochs=10
        --config.train.lr=5e-5 --config.train.lr_backbone=2.5e-5
        '--config.train.lr_drop_epochs=(7,)' --config.train.eval_every=0
        --config.train.checkpoint_every=500)
declare -A configs=([exact]=configs/synthetic_demo.py [enact]=configs/enact_demo.py)
enact="${ENACT:-enact:sigma=3}"
declare -A attention=([exact]=exact [enact]="$enact")
declare -A model_args=([exact]="" [enact]="--config.model.encoder_attention=$enact")
left() { echo $(( budget - $(elapsed) )); }
read -r -a names <<< "${NAMES:-exact enact}"
for name in "${names[@]}"; do
  dir="/tmp/ft_$name"
  [ -f "$dir/DONE" ] && continue
  [ "$(left)" -lt 150 ] && break
  resume_from "carry/ft_$name" "$dir" || { rm -rf "$dir" && mkdir -p "$dir"; }
  set +e
  timeout -s TERM "$(( $(left) - 30 ))" python3 train.py --config "${configs[$name]}" \
    --workdir "$dir" "${SYN_DATA[@]}" "${recipe[@]}" ${model_args[$name]} --no-progress "${@:2}" 2>&1 \
    | tee "/tmp/ft_$name.log" | grep -v "^step [0-9]*[1-9]50/"
  set -e
  cp "$dir/metrics.jsonl" "$out/ft_${name}_metrics.jsonl"
  if grep -q "^model at step" "/tmp/ft_$name.log" && ! grep -q "stopped early" "/tmp/ft_$name.log"; then
    touch "$dir/DONE"; echo "ft_$name trained at $(elapsed) s"
  else
    pack_checkpoint "$dir"; echo "ft_$name stopped at $(elapsed) s; its checkpoint is in \$OUT"
    break
  fi
done
for name in "${names[@]}"; do
  dir="/tmp/ft_$name"
  if [ -f "$dir/DONE" ] && [ ! -f "/tmp/ft_eval_$name/report.json" ] && [ "$(left)" -gt 120 ]; then
    python3 eval.py --checkpoint "$dir/model" --config "${configs[$name]}" "${SYN_VAL[@]}" \
      --output-dir "/tmp/ft_eval_$name" --attention "${attention[$name]}" --no-progress \
      --batch-size 16 | grep -v "^wrote"
    cp "/tmp/ft_eval_$name/report.json" "$out/ft_${name}_eval.json"
    python3 -m detr_jax.benchmark --config "${configs[$name]}" --checkpoint "$dir/model" \
      --mode infer --attention "${attention[$name]}" --batch 1 8 32 --size 512x512 \
      --warmup 3 --repeats 20 --json "$out/ft_${name}_infer.json" 2>&1 | grep -E "^\||rror" || true
    echo "ft_$name evaluated at $(elapsed) s"
  fi
done
ls -la "$out"
