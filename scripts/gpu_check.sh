#!/usr/bin/env bash
# The prepared GPU check (issue 20): gpu-marked tests, z backends (speed, bits vs native), the ZO step
# on SmolLM2-135M and a random DataJuicer-1.3B shape, batched eval, a 2-round paper-shaped run.
# Writes benchmarks/results/gpu-<card>.json + .md (see benchmarks/gpu_check.py). <= 8 min on one GPU.
#
#   scripts/gpu_check.sh                                # on a CUDA machine
#   TRITON_INTERPRET=1 scripts/gpu_check.sh --reduced   # on a CPU: the same path at tiny sizes
#
# Options are passed on to benchmarks/gpu_check.py (--sections, --tau, --budget-s, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FEDKSEED_DATA_ROOT="${FEDKSEED_DATA_ROOT:-$PWD/../shared/data}"
# the hard stop (GPU_CHECK_TIMEOUT seconds, default 480; a loaded CPU in --reduced mode may need more):
# the report is rewritten after every section, so a cut-off run keeps what it measured
exec timeout --signal=INT "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" benchmarks/gpu_check.py "$@"
