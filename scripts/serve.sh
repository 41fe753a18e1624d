#!/usr/bin/env bash
# Set up (a virtual environment in .venv) and run the service on the built-in model.
# Extra arguments go to `infermeter serve` (e.g. --port 8001).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e .
exec .venv/bin/infermeter serve "$@"
