#!/usr/bin/env bash
# The GPU check (bench/gpu.py) from a source checkout: tests and benchmarks on CUDA, results in
# $OUT (or --out DIR). Extra arguments go to bench/gpu.py, e.g. `bench/gpu.sh --device cpu --smoke`.
# Wheels the machine lacks (bench/gpu-requirements.txt), installed with --target wheels-site,
# are found through PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src:$PWD${WHEELS_SITE:+:$WHEELS_SITE}${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${WHEELS_SITE:-}" ] && [ -d wheels-site ]; then export PYTHONPATH="$PYTHONPATH:$PWD/wheels-site"; fi
has_device=0
for arg in "$@"; do [ "$arg" = "--device" ] && has_device=1; done
if [ "$has_device" = 1 ]; then exec "${PYTHON:-python3}" -m bench.gpu "$@"; fi
exec "${PYTHON:-python3}" -m bench.gpu --device cuda "$@"
