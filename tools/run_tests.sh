#!/usr/bin/env bash
# Set up, lint, and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
# One intra-op thread: the suite runs tiny models, often several processes at once, on 2 cores.
OMP_NUM_THREADS=1 WANDB_MODE=offline .venv/bin/python -m pytest -q --durations=15 "$@"
