#!/usr/bin/env bash
# Train (or resume) a model of the synthetic benchmark on a GPU machine within a budget.
#   [CONFIG=configs/synthetic_demo.py] [RUN=demo_run] \
#     bash benchmarks/device/train_demo.sh SECONDS [--config.x=y ...]
# Generates the synthetic benchmark (8000 train / 300 val images) unless this warm machine
# already has it, then resumes from (in order) this warm machine's /tmp/$RUN, or
# carry/$RUN/ckpt.tar.part-*, or starts a new run from a backbone pretrained on object
# crops (detr_jax.training.backbone_pretrain; carry/backbone.tar when carried, so that
# several runs share one, else pretrained here and written to $OUT/backbone.tar). Trains
# until done or until SIGTERM at SECONDS (evaluating on the val split every
# train.eval_every steps) and writes to $OUT the exported model (model.tar), metrics.jsonl
# and the training checkpoint split into parts (with their list, ckpt.parts) for the next
# call. A checkpoint too large to carry in one call with the working tree arrives over
# several warm calls: each carries some parts in carry/$RUN and runs
#   source benchmarks/device/common.sh; gather_parts carry/$RUN
# and the training call then finds them all (it stops naming a listed part that is missing).
# The demo model: the defaults (stage 2 adds --config.train.epochs=108
# '--config.train.lr_drop_epochs=(88,)'). DETR vs DETR+ENACT at one budget, e.g.
#   RUN=exact20 bash benchmarks/device/train_demo.sh 565 --config.train.epochs=20 '--config.train.lr_drop_epochs=(14,)'
#   RUN=enact20 CONFIG=configs/enact_demo.py bash benchmarks/device/train_demo.sh 565 (same overrides)
# THEN="--config.train.epochs=108 --config.train.lr_drop_epochs=(88,)" runs stage 2 in the
# same call once stage 1 has finished (its words are overrides; no quoting inside).
# BACKBONE_DIR (default /tmp/backbone) is where the backbone is unpacked or pretrained: runs
# side by side on one machine (train_pair.sh) each take their own. BACKBONE_TAR (default
# carry/backbone.tar) is the packed backbone used when present.
set -euo pipefail
budget="${1:-480}"
config="${CONFIG:-configs/synthetic_demo.py}"
run="${RUN:-demo_run}"
backbone="${BACKBONE_DIR:-/tmp/backbone}"
backbone_tar="${BACKBONE_TAR:-carry/backbone.tar}"
source benchmarks/device/common.sh
make_synthetic
init=()
if ! resume_from "carry/$run" "/tmp/$run"; then
  rm -rf "/tmp/$run" && mkdir -p "/tmp/$run"
  if [ -f "$backbone_tar" ]; then
    rm -rf "$backbone" && mkdir -p "$backbone" && tar -C "$backbone" -xf "$backbone_tar"
    echo "backbone from $backbone_tar"
  elif [ ! -f "$backbone/config.json" ]; then
    pretrain_backbone "$config" "$backbone" "$out/backbone.tar"
  fi
  init=(--config.train.init_backbone="$backbone")
fi
set +e
timeout -s TERM "$(( budget - $(elapsed) ))" python3 train.py \
  --config "$config" --workdir "/tmp/$run" "${SYN_DATA[@]}" "${init[@]}" --no-progress "${@:2}"
code=$?
echo "train.py exit code $code"
# THEN="overrides": the next stage, resumed from this one's last checkpoint when this one
# finished with time to spare (e.g. the demo's stage 2 after stage 1, in the same call).
if [ "$code" = 0 ] && [ -n "${THEN:-}" ] && [ "$(( budget - $(elapsed) ))" -gt 60 ]; then
  read -r -a then_args <<< "$THEN"
  echo "stage 1 done at $(elapsed) s; next stage: ${then_args[*]}"
  timeout -s TERM "$(( budget - $(elapsed) ))" python3 train.py \
    --config "$config" --workdir "/tmp/$run" "${SYN_DATA[@]}" --no-progress "${@:2}" "${then_args[@]}"
  echo "train.py (next stage) exit code $?"
fi
set -e
tar -C "/tmp/$run" -cf "$out/model.tar" model model_config.json 2>/dev/null || echo "no exported model yet"
cp "/tmp/$run/metrics.jsonl" "$out/metrics.jsonl"
pack_checkpoint "/tmp/$run"
ls -la "$out"
