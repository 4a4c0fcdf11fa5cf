#!/usr/bin/env bash
# The evidence experiment (benchmarks/evidence.py) under runs/evidence with two processes per phase
# (one thread each), then its report: benchmarks/results/evidence.{json,md}. Resumable: finished
# jobs are skipped, so running it again continues where it stopped. Extra arguments (--smoke,
# --work DIR, --out PREFIX) go to every phase.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=offline WANDB_SILENT=true OMP_NUM_THREADS=1 PYTHONPATH="benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-.venv/bin/python} benchmarks/evidence.py"
work=runs/evidence
for ((i = 1; i <= $#; i++)); do [ "${!i}" = --work ] && { j=$((i + 1)); work=${!j}; }; done
mkdir -p "$work"
start=$(date +%s)
for phase in prepare tune select rows; do
    if [ "$phase" = select ]; then
        $PY select "$@" > "$work/select.log"
        continue
    fi
    $PY "$phase" --shard 0/2 "$@" > "$work/${phase}_0.log" 2>&1 &
    first=$!
    $PY "$phase" --shard 1/2 "$@" > "$work/${phase}_1.log" 2>&1
    wait "$first"
done
echo "{\"seconds\": $(( $(date +%s) - start ))}" > "$work/wall_seconds.json"
$PY report "$@"
