#!/usr/bin/env bash
# Reproduce the paper's tables.
#   ./reproduce.sh [--quick | --full] [--tasks listops,text] [--models esssm,fixed] [--devices N] [--out DIR]
#   ./reproduce.sh ... --launcher local|slurm [--status | --collect]   (runs as submitit jobs; see README)
# --quick (default) generates ListOps and trains small models on a CPU in minutes;
# --full trains the ~20M-parameter models on the five tasks (GPUs and the data sets needed).
# Runs with a finished checkpoint are skipped and interrupted runs resume, so rerunning is safe.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
exec "$PY" -m esssm.lab.reproduce_cli "$@"
