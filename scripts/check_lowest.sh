#!/usr/bin/env bash
# Install the lowest versions pyproject.toml declares into .venv-lowest and run a fast
# subset of the tests there (model parity, attentions, a training step, checkpoints).
#   bash scripts/check_lowest.sh [extra pytest arguments]
# The floors are read from pyproject.toml's [project] dependencies (">=X" becomes "==X");
# jaxlib is pinned with jax. Needs the package index (a few minutes the first time).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DETR_JAX_LOWEST_VENV:-$root/.venv-lowest}"
python="${PYTHON:-python3}"
cd "$root"
pins="$("$python" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
pins = []
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?>=([0-9][^,;\s]*)", dep.strip())
    if not m:
        raise SystemExit(f"pyproject.toml: cannot read a floor from {dep!r}")
    pins.append(f"{m.group(1)}{m.group(2) or ''}=={m.group(3)}")
    if m.group(1) == "jax":
        pins.append(f"jaxlib=={m.group(3)}")
print("\n".join(pins))
PY
)"
echo "[lowest] $(echo "$pins" | tr '\n' ' ')"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
printf '%s\n' "$pins" > "$venv/floors.txt"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r "$venv/floors.txt" pytest
"$venv/bin/python" -m pip install -q --no-deps -e "$root"
"$venv/bin/python" -m pip freeze | grep -iE "^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|grain)=="
export JAX_PLATFORMS=cpu
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/models/test_parity.py tests/attention/test_e2lsh.py tests/attention/test_kmeans.py \
  tests/attention/test_blocked.py tests/training/test_losses.py tests/training/test_matcher.py \
  tests/test_checkpoint.py tests/test_paths.py "$@"
