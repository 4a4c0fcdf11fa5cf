#!/usr/bin/env bash
# One command on a GPU machine (under 10 minutes on one large GPU): set up, then benchmarks/gpu_check.py
# (the paper configuration) and benchmarks/modern_step.py (one training step of each modern config at its
# published size, against the bare model's forward and backward), then benchmarks/place_distill_step.py
# (the label-map teacher's and the distillation step's time against the baseline's step, each modern model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export WANDB_MODE=offline WANDB_SILENT=true
timeout 480 .venv/bin/python benchmarks/gpu_check.py "$@"
quick=(); [[ " $* " == *" --quick "* ]] && quick=(--quick --steps 1)
timeout 300 .venv/bin/python benchmarks/modern_step.py "${quick[@]}"
modern=(mixvpr_resnet50 salad_dinov2 boq_resnet50 boq_dinov2)
timeout 300 .venv/bin/python benchmarks/place_distill_step.py --models "${modern[@]}" "${quick[@]}" \
    --out benchmarks/results/place_distill_step_gpu.json
