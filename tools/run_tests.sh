#!/usr/bin/env bash
# Set up, lint, run the whole test suite on CPU, then a smoke run of the benchmarks (they must keep running).
#   BENCHMARKS=all bash tools/run_tests.sh   runs every benchmark with --quick (a few minutes) instead of the
#                                            quickstart one alone (about half a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
# One intra-op thread: the suite runs tiny models, often several processes at once, on 2 cores.
OMP_NUM_THREADS=1 WANDB_MODE=offline .venv/bin/python -m pytest -q --durations=15 "$@"
if [ "${BENCHMARKS:-core_pipeline}" = all ]; then
  WANDB_MODE=offline .venv/bin/python tools/benchmark.py --quick
else
  WANDB_MODE=offline .venv/bin/python tools/benchmark.py --quick --only core_pipeline
fi
