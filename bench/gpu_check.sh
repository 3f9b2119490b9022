#!/usr/bin/env bash
# Student-phase samples/s on CPU vs GPU for the MNIST-1D 50k-transfer job, plus GPU memory peak.
# Runs in well under 3 minutes on one GPU (the DDP part, 2 GPUs only, a few more); on a CPU-only
# machine the GPU parts are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
timeout 170 "$PY" -m bench.gpu_check "$@"
# DDP with 2 ranks (NCCL) where 2 GPUs exist, each precision; prints SKIPPED otherwise.
exec timeout 400 "$PY" -m bench.gpu_check_ddp "$@"
