#!/usr/bin/env bash
# The whole weighting experiment under runs/weighting with two processes per phase (one thread
# each), then its report: benchmarks/results/distillation_experiment.{json,md}. Resumable:
# finished jobs are skipped, so running it again continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true OMP_NUM_THREADS=1
PY=".venv/bin/python benchmarks/distillation_experiment.py"
mkdir -p runs/weighting
start=$(date +%s)
for phase in base tune select final; do
    if [ "$phase" = select ]; then
        $PY select
        continue
    fi
    $PY "$phase" --shard 0/2 > "runs/weighting/${phase}_0.log" 2>&1 &
    first=$!
    $PY "$phase" --shard 1/2 > "runs/weighting/${phase}_1.log" 2>&1
    wait "$first"
done
echo "{\"seconds\": $(( $(date +%s) - start ))}" > runs/weighting/wall_seconds.json
$PY report
