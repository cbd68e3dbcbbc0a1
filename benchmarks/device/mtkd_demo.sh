#!/usr/bin/env bash
# MTKD on the demo model (ACT paper, Section 3.3), on a GPU machine, resumable:
#   bash benchmarks/device/mtkd_demo.sh SECONDS [--config.x=y ...]
# 1. ACT zero-shot: eval.py of models/demo with exact and ACT at L = 16, 20, 24, 32
#    -> $OUT/zeroshot.md, zeroshot.json (skipped with ZEROSHOT=0)
# 2. MTKD fine-tuning (configs/mtkd_demo.py) from models/demo, resuming from this warm
#    machine's /tmp/mtkd or carry/mtkd_run/ckpt.tar.part-*; if SIGTERM comes first, the
#    checkpoint goes to $OUT in parts
# 3. the fine-tuned model evaluated the same way -> $OUT/mtkd.md, mtkd.json, mtkd_model.tar
set -euo pipefail
budget="${1:-560}"
source benchmarks/device/common.sh
make_synthetic
# SETTINGS="exact act:L=16,r=4 ..." replaces the evaluated attention settings
read -r -a attention <<< "${SETTINGS:-exact act:L=16 act:L=20 act:L=24 act:L=32}"
evaluate() {  # model dir, name
  python3 eval.py --checkpoint "$1" --config configs/synthetic_demo.py "${SYN_VAL[@]}" \
    --output-dir "/tmp/eval_$2" --attention "${attention[@]}" --no-progress --batch-size 16 \
    | grep -v "^wrote"
  cp "/tmp/eval_$2/report.md" "$out/$2.md"; cp "/tmp/eval_$2/report.json" "$out/$2.json"
}
if [ "${ZEROSHOT:-1}" = 1 ] && [ ! -f /tmp/eval_zeroshot/report.json ]; then
  evaluate models/demo zeroshot
  echo "zero-shot evaluation done at $(elapsed) s"
fi
if [ ! -f /tmp/mtkd/DONE ] && [ -f carry/mtkd_run/mtkd_model.tar ]; then
  mkdir -p /tmp/mtkd && tar -C /tmp/mtkd -xf carry/mtkd_run/mtkd_model.tar && touch /tmp/mtkd/DONE
fi
if [ ! -f /tmp/mtkd/DONE ]; then
  resume_from carry/mtkd_run /tmp/mtkd || echo "MTKD from models/demo"
  set +e
  timeout -s TERM "$(( budget - $(elapsed) - 40 ))" python3 train.py --config configs/mtkd_demo.py \
    --workdir /tmp/mtkd "${SYN_DATA[@]}" --no-progress "${@:2}" 2>&1 | tee /tmp/mtkd_train.log \
    | grep -v "^step [0-9]*[1-9]50/"
  set -e
  cp /tmp/mtkd/metrics.jsonl "$out/mtkd_metrics.jsonl"
  if grep -q "^model at step" /tmp/mtkd_train.log && ! grep -q "stopped early" /tmp/mtkd_train.log; then
    echo "MTKD training done at $(elapsed) s"
    touch /tmp/mtkd/DONE
    tar -C /tmp/mtkd -cf "$out/mtkd_model.tar" model
  else
    pack_checkpoint /tmp/mtkd
  fi
fi
if [ -f /tmp/mtkd/DONE ] && [ $(( budget - $(elapsed) )) -gt 200 ]; then
  evaluate /tmp/mtkd/model mtkd
  echo "MTKD evaluation done at $(elapsed) s"
fi
ls -la "$out"
