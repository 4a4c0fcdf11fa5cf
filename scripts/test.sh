#!/usr/bin/env bash
# The test suite: set up, lint, then run the default (not slow) tests. Pass -m slow for the heavy ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true
# Lint and type-check first (ruff and mypy, configured in pyproject.toml), then the tests.
.venv/bin/ruff check src tests benchmarks examples
.venv/bin/ruff format --check src tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
