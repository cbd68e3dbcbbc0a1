#!/usr/bin/env bash
# The fixture parity tests of every detector on the GPU, at each matmul precision given
# (default: highest), with the errors they check listed per test.
#   bash benchmarks/device/detector_parity.sh [highest default ...]
# -> $OUT/parity_<precision>.xml and the tables on stdout
set -uo pipefail
source benchmarks/device/common.sh
tests=(tests/models/test_parity.py::test_matches_official_detr
       tests/models/test_conditional_detr.py::test_matches_official_conditional_detr
       tests/models/test_anchor_detr.py::test_matches_official_anchor_detr
       tests/convert/test_enact_released.py::test_matches_released_detr_enact
       tests/convert/test_conditional_enact_released.py::test_matches_released_conditional_detr_enact
       tests/convert/test_anchor_enact_released.py::test_matches_released_anchor_detr_enact)
for precision in "${@:-highest}"; do
  echo "## matmul precision: $precision on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  JAX_DEFAULT_MATMUL_PRECISION="$precision" python3 -m pytest -q -p no:cacheprovider \
    "${tests[@]}" --junitxml="$out/parity_$precision.xml" 2>&1 | tail -3
  python3 benchmarks/junit_properties.py "$out/parity_$precision.xml"
done
