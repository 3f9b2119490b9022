#!/usr/bin/env bash
# Student-phase samples/s on CPU vs GPU for the MNIST-1D 50k-transfer job, plus GPU memory peak.
# Runs in well under 3 minutes on one GPU; on a CPU-only machine the GPU part is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec timeout 170 "$PY" -m bench.gpu_check "$@"
