#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the GPU throughput check in one command. benchmarks/gpu_check.py does
# the work (the offline setup included); `--help` lists its steps, outputs and flags.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels     # here, once: the wheels the GPU image lacks
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)   # device tool
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check                   # any CPU
#
# The interpreter: $PYTHON, else the checkout's .venv/bin/python, else python3 (on the GPU image,
# the one with jax and torch; .venv does not travel there).
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    PY=python3
    [[ -x .venv/bin/python ]] && PY=.venv/bin/python
fi
exec "$PY" benchmarks/gpu_check.py "$@"
