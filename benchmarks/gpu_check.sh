#!/usr/bin/env bash
# One command on a GPU machine (under 8 minutes on one large GPU): set up, then benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
