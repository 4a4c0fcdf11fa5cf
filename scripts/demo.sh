#!/usr/bin/env bash
# The main job: set up, then run teacher, RGB baseline and distillation on the synthetic world
# and print the Recall@N table (also written to runs/demo/results.{json,md}).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/structvpr demo --out runs/demo "$@"
