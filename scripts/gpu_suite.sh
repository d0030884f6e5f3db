#!/usr/bin/env bash
# The GPU suite (scripts/gpu_suite.py): run on a machine with one CUDA GPU, within 8 minutes.
#   bash scripts/gpu_suite.sh OUT_DIR
# Installs nothing: run it where the project is installed (README). Pins CPU threads so that the
# world bench of the last section does not oversubscribe the cores.
set -euo pipefail
out=${1:?usage: bash scripts/gpu_suite.sh OUT_DIR}
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 540 python scripts/gpu_suite.py --out "$out"
