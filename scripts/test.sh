#!/usr/bin/env bash
# Test suite on CPU: sets up .venv when missing, then runs pytest.
#   bash scripts/test.sh                 # the whole suite (what CI runs)
#   bash scripts/test.sh tests/models    # chosen tests, in one plain pytest run
# The whole suite runs in two passes: the tests spread over DETR_JAX_TEST_WORKERS pytest
# workers (pytest-xdist; default: the cores, at most 4; one file per worker at a time),
# then the tests marked `multiprocess` one after another, since they start processes that
# must finish within time limits and would compete for the cores with the first pass.
# Both passes share one persistent compilation cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
if [ $# -gt 0 ]; then
  exec python -m pytest -q --durations=15 "$@"
fi
cache="$(mktemp -d -t detr_jax_jit_cache_XXXXXX)"
trap 'rm -rf "$cache"' EXIT
export DETR_JAX_TEST_CACHE="${DETR_JAX_TEST_CACHE:-$cache}"
cores="$(nproc 2>/dev/null || echo 2)"
workers="${DETR_JAX_TEST_WORKERS:-$(( cores < 4 ? (cores < 2 ? 1 : cores) : 4 ))}"
status=0
python -m pytest -q --durations=15 -n "$workers" --dist loadfile -m "not multiprocess" || status=$?
echo "[test] the multiprocess tests, one at a time"
python -m pytest -q --durations=10 -m multiprocess || status=$((status ? status : $?))
exit "$status"
