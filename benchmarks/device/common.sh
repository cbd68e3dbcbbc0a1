# Shared set-up of the device scripts (sourced): carried wheels, the synthetic benchmark.
#   source benchmarks/device/common.sh; make_synthetic; "${SYN_DATA[@]}" are config overrides
out="${OUT:-/tmp/out}"; mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site ]; then
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

# Generate the synthetic benchmark (8000 train / 300 val) in /tmp/syn unless this warm
# machine already has the one of the current generator.
make_synthetic() {
  local stamp; stamp=$(sha1sum detr_jax/data/synthetic.py | cut -c1-12)
  if [ "$(cat /tmp/syn/stamp 2>/dev/null)" != "$stamp" ]; then
    rm -rf /tmp/syn
    python3 -m detr_jax.data.synthetic --output /tmp/syn --train 8000 --val 300 --workers 16
    echo "$stamp" > /tmp/syn/stamp
    echo "generated the synthetic benchmark in $(elapsed) s"
  fi
}
SYN_DATA=(--config.data.train_annotations=/tmp/syn/annotations/instances_train.json
          --config.data.train_images=/tmp/syn/train
          --config.data.val_annotations=/tmp/syn/annotations/instances_val.json
          --config.data.val_images=/tmp/syn/val)
SYN_VAL=(--annotations /tmp/syn/annotations/instances_val.json --image-root /tmp/syn/val)

# Unpack carried checkpoint parts ($1/ckpt.tar.part-*) into the work directory $2 unless
# the warm machine already has a checkpoint there; returns 1 when there is none at all.
resume_from() {
  local carried="$1" workdir="$2"
  if ls "$workdir/checkpoints" 2>/dev/null | grep -qE '^[0-9]+$'; then
    echo "resuming from this machine's $workdir ($(ls "$workdir/checkpoints" | tr '\n' ' '))"
  elif ls "$carried"/ckpt.tar.part-* >/dev/null 2>&1; then
    rm -rf "$workdir" && mkdir -p "$workdir"
    cat "$carried"/ckpt.tar.part-* | tar -x -C "$workdir"
    cp "$carried/metrics.jsonl" "$workdir/" 2>/dev/null || true
    echo "resuming from the carried checkpoint $(ls "$workdir/checkpoints")"
  else
    return 1
  fi
}

# Split the latest checkpoint of work directory $1 into 15 MB parts under $out.
pack_checkpoint() {
  local latest; latest=$(ls "$1/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)
  tar -C "$1" -cf - "checkpoints/$latest" | split -b 15M - "$out/ckpt.tar.part-"
}
