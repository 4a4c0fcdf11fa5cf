#!/usr/bin/env bash
# Create .venv (once) with torch and structvpr installed in editable mode, with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.structvpr-installed
log=.venv/pip-install.log
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    echo "setting up .venv (pip output in $log) ..."
    if ! {
        .venv/bin/python -m pip install -q --upgrade pip &&
        # torch and torchvision lie on this machine's disk; pip caps them at these releases here.
        .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" &&
        .venv/bin/python -m pip install -q -e ".[tests]"
    } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "set-up failed; full pip output in $log" >&2
        exit 1
    fi
    touch "$stamp"
fi
