#!/usr/bin/env bash
# Create .venv with tqvt and its test dependencies, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test]"
exec .venv/bin/pytest -q "$@"
