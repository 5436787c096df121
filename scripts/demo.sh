#!/usr/bin/env bash
# Create .venv with tqvt, then run the demo against the built-in simulators.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q .
exec .venv/bin/tqvt demo "$@"
