#!/usr/bin/env bash
# Install swarmd with its test tools into .venv, lint, type-check and run every test.
# Extra arguments go to pytest, e.g. ./test.sh -m "not slow" for the quick set.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
