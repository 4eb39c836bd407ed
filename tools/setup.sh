#!/usr/bin/env bash
# Create .venv with everything lit_features needs (idempotent: reinstalls only when pyproject.toml changes).
# torch goes in first: installing lightning/transformers/diffusers first would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.lit_features-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # pip's own chatter (index notes, build warnings) goes to a log; it is shown only when an install fails.
  log=.venv/setup.log
  echo "setting up .venv (torch, then lit_features and its dependencies; pip's output: $log) ..."
  install() {
    if ! .venv/bin/python -m pip install "$@" >>"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "setup failed: pip install $* (whole output: $log)" >&2
      exit 1
    fi
  }
  : >"$log"
  install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || install -q "$TORCH_SPEC"
  install -q -e ".[dev]"
  rm -f .venv/.lit_features-*
  touch "$stamp"
  echo "set up: $(.venv/bin/python -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)')"
fi
