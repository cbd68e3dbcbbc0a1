# Shared set-up of the device scripts (sourced): carried wheels, the synthetic benchmark.
#   source benchmarks/device/common.sh; make_synthetic; "${SYN_DATA[@]}" are config overrides
# The carried wheels (WHEELS, default .whl/) go into SITE (default /tmp/site) once per machine.
out="${OUT:-/tmp/out}"; mkdir -p "$out"
wheels="${WHEELS:-.whl}"; site="${SITE:-/tmp/site}"
if ls "$wheels"/*.whl >/dev/null 2>&1 && [ ! -d "$site" ]; then
  pip install --no-index --no-deps --target "$site" "$wheels"/*.whl >/dev/null 2>&1
fi
[ -d "$site" ] && export PYTHONPATH="$site:$PWD"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
# A run spec RUN=CONFIG[@ATTENTION] -> run_name, run_config, run_attention ("" when absent);
# exits 2 naming the spec when CONFIG is not a file.
parse_run() {
  run_name="${1%%=*}"; local rest="${1#*=}"
  run_config="${rest%%@*}"; run_attention=""
  [ "$rest" != "$run_config" ] && run_attention="${rest#*@}"
  [ -f "$run_config" ] || { echo "error: $1: no config file $run_config" >&2; exit 2; }
}

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
# Pretrain the demo backbone on object crops with config $1 into the directory $2 (emptied
# first) and pack it as the tar file $3.
pretrain_backbone() {
  rm -rf "$2"
  python3 -m detr_jax.training.backbone_pretrain --config "$1" --output "$2" "${SYN_DATA[@]}" \
    2>&1 | grep -v "step [0-9]*[1-9]00/" | tail -3
  tar -C "$2" -cf "$3" .
}
SYN_DATA=(--config.data.train_annotations=/tmp/syn/annotations/instances_train.json
          --config.data.train_images=/tmp/syn/train
          --config.data.val_annotations=/tmp/syn/annotations/instances_val.json
          --config.data.val_images=/tmp/syn/val)
SYN_VAL=(--annotations /tmp/syn/annotations/instances_val.json --image-root /tmp/syn/val)

# Carried checkpoint parts ($1/ckpt.tar.part-*, with the list ckpt.parts of every part's
# name and size) are first gathered into /tmp/carried/<name of $1>, which a warm machine
# keeps between calls. A checkpoint larger than a call can carry therefore arrives over
# several calls of a few seconds, one or more parts each (`gather_parts DIR` alone), and
# the call that trains finds them all there.
carried_root="${CARRIED_ROOT:-/tmp/carried}"
gather_parts() {
  local carried="$1" stash; stash="$carried_root/$(basename "$1")"
  mkdir -p "$stash"
  if ls "$carried"/* >/dev/null 2>&1; then cp "$carried"/* "$stash"/; fi
  echo "$stash holds: $(ls "$stash" | tr '\n' ' ')"
}

# Unpack the gathered checkpoint parts of $1 into the work directory $2 unless the warm
# machine already has a checkpoint there; returns 1 when there is none at all, and stops
# naming the missing part when ckpt.parts lists one that has not arrived.
resume_from() {
  local carried="$1" workdir="$2" stash name size
  stash="$carried_root/$(basename "$carried")"
  if ls "$workdir/checkpoints" 2>/dev/null | grep -qE '^[0-9]+$'; then
    echo "resuming from this machine's $workdir ($(ls "$workdir/checkpoints" | tr '\n' ' '))"
    return 0
  fi
  gather_parts "$carried" >/dev/null
  ls "$stash"/ckpt.tar.part-* >/dev/null 2>&1 || return 1
  if [ -f "$stash/ckpt.parts" ]; then
    while read -r name size; do
      if [ "$(stat -c %s "$stash/$name" 2>/dev/null)" != "$size" ]; then
        echo "error: checkpoint part $name ($size bytes) has not arrived in $stash" >&2
        exit 3
      fi
    done < "$stash/ckpt.parts"
  fi
  rm -rf "$workdir" && mkdir -p "$workdir"
  if [ -f "$stash/ckpt.parts" ]; then  # exactly the listed parts, in order
    (cd "$stash" && cat $(cut -d' ' -f1 ckpt.parts)) | tar -x -C "$workdir"
  else
    cat "$stash"/ckpt.tar.part-* | tar -x -C "$workdir"
  fi
  cp "$stash/metrics.jsonl" "$workdir/" 2>/dev/null || true
  echo "resuming from the carried checkpoint $(ls "$workdir/checkpoints")"
}

# Split the latest checkpoint of work directory $1 into parts of PART_SIZE (15M) under
# $out, listed with their sizes in $out/ckpt.parts.
pack_checkpoint() {
  local latest; latest=$(ls "$1/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -1)
  tar -C "$1" -cf - "checkpoints/$latest" | split -b "${PART_SIZE:-15M}" - "$out/ckpt.tar.part-"
  (cd "$out" && for f in ckpt.tar.part-*; do echo "$f $(stat -c %s "$f")"; done) > "$out/ckpt.parts"
}
