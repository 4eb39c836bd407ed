#!/usr/bin/env bash
# Set up, make tiny stand-in weights (only if real ones are absent), extract the quickstart features, summarise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python tools/make_tiny_models.py --out pretrained_model --only hf_vision --keep-real
.venv/bin/python -m lit_features predict --config configs/quickstart.yaml
.venv/bin/python -m lit_features inspect outputs/quickstart
