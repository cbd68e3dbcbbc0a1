#!/usr/bin/env bash
# Test suite on CPU: sets up .venv when missing, then runs pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/setup.sh"
cd "$root"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
python -m pytest -q --durations=15 "$@"
