#!/usr/bin/env bash
# The GPU suite (scripts/gpu_suite.py): run on a machine with one CUDA GPU, within 8 minutes.
#   bash scripts/gpu_suite.sh OUT_DIR [gpu_suite.py's options, e.g. --stack-results FILE]
# Installs nothing: run it where the project is installed (README). Pins CPU threads so that the
# CPU halves of the equality and training sections (and bench stack, when it runs here) do not
# oversubscribe the cores.
set -euo pipefail
out=${1:?usage: bash scripts/gpu_suite.sh OUT_DIR [options]}
shift
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${GPU_SUITE_TIMEOUT:-540}" "${PYTHON:-python3}" scripts/gpu_suite.py --out "$out" "$@"
