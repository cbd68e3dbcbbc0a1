#!/usr/bin/env bash
# Main job, offline on a CPU: evaluate the bundled demo detector (models/demo, a small DETR-DC5
# trained on the synthetic benchmark; configs/synthetic_demo.py says how) on the synthetic
# validation split, generated here deterministically: exact encoder attention against ACT at
# several L and K-means clustered attention. Prints the AP / GFLOPs / time table and writes it
# with plots (AP vs GFLOPs, prototype ratio per layer, cluster maps) to work/demo/eval/.
# Extra arguments go to eval.py, e.g. `bash scripts/demo.sh --attention exact act:L=8`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
work="${DETR_JAX_DEMO_DIR:-work/demo}"
model="${DETR_JAX_DEMO_MODEL:-models/demo}"
if [ ! -f "$model/config.json" ]; then
  echo "no demo model at $model (config.json missing)" >&2
  exit 1
fi
# each phase's wall-clock and CPU time (user + sys over both cores) on stderr
TIMEFORMAT="[demo] %R s wall, %U s user + %S s sys CPU"
if [ ! -f "$work/synthetic/annotations/instances_val.json" ]; then
  echo "[demo] generating the synthetic validation split (300 images)" >&2
  time python -m detr_jax.data.synthetic --output "$work/synthetic" --train 0 --val 300
fi
echo "[demo] evaluating (compiles once per setting; the compilation cache makes re-runs start fast)" >&2
set -x
time python eval.py --checkpoint "$model" --config configs/synthetic_demo.py \
  --annotations "$work/synthetic/annotations/instances_val.json" \
  --image-root "$work/synthetic/val" --output-dir "$work/eval" "$@"
