#!/usr/bin/env bash
# The test suite: set up, then run the default (not slow) tests. Pass -m slow for the heavy ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest "$@"
