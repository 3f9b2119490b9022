#!/usr/bin/env bash
# One command: create the benchmark-only venv for torchdistill (never used by the app).
#   bash bench/peer_torchdistill_setup.sh [VENV=/tmp/venv-torchdistill]
set -euo pipefail
VENV=${1:-/tmp/venv-torchdistill}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
# torchdistill depends on torchvision; pip resolves it from the local index to the matching pair
# torch 2.14.1+cu130 / torchvision 0.29.1+cu130 (replaces the 2.13.0 CPU wheel; ~5 GB in the venv).
"$VENV/bin/pip" install -q torchdistill
"$VENV/bin/python" -c "import torchdistill, torch, torchvision; print('torchdistill', torchdistill.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
