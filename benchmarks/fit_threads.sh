#!/usr/bin/env bash
# s/step of one `lightning fit` (quick ListOps ES-SSM, 25 steps, the first 5 untimed) while
# another process spins on one core, as on a shared machine; prints the load before and after.
#   benchmarks/fit_threads.sh LABEL [VAR=VALUE ...]     e.g.  benchmarks/fit_threads.sh one OMP_NUM_THREADS=1
#   NOSPIN=1 benchmarks/fit_threads.sh LABEL ...        without the spinning process
# Needs data/listops-quick (./reproduce.sh --quick generates it).
set -euo pipefail
cd "$(dirname "$0")/.."
label=$1; shift
spin=
if [ -z "${NOSPIN:-}" ]; then timeout 900 .venv/bin/python -c "while True: pass" & spin=$!; fi
sleep 1
echo "$label start $(uptime)"
env "$@" timeout 800 .venv/bin/lightning fit --config conf/quick/listops/esssm.yaml --trainer.max_steps 25 \
  --trainer.limit_val_batches 1 --sweep.val_budgets '[16]' --trainer.enable_progress_bar false \
  --trainer.logger.init_args.save_dir "${TMPDIR:-/tmp}/fit_threads" --trainer.logger.init_args.version "$label-$$" \
  --trainer.callbacks+=benchmarks.step_timer.StepTimer 2>&1 | grep STEPTIMER || true
echo "$label end $(uptime)"
if [ -n "$spin" ]; then kill "$spin"; fi
