#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install detr_jax with its test extras when missing.
# Sourced by demo.sh and test.sh; safe to run again (it only installs what is missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DETR_JAX_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "detr_jax needs Python 3.11 or newer ($python is $("$python" --version 2>&1))" >&2; exit 1; }
  echo "[setup] creating $venv"
  "$python" -m venv "$venv"
fi
# find_spec looks the packages up without importing them (importing torch and transformers
# alone takes seconds on a small CPU machine)
if ! "$venv/bin/python" -c 'import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ("detr_jax", "torch", "transformers", "pytest", "xdist")))' \
    >/dev/null 2>&1; then
  echo "[setup] installing detr_jax and its test dependencies into $venv (a few minutes, once)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch is only used to read .pth files and by the tests; the CPU build is enough.
  "$venv/bin/python" -m pip install -q "${DETR_JAX_TORCH:-torch==2.13.0}" || "$venv/bin/python" -m pip install -q torch
  "$venv/bin/python" -m pip install -q -e "$root[test]"
fi
export PATH="$venv/bin:$PATH"
