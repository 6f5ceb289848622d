#!/usr/bin/env bash
# Install swarmd with its test tools into .venv, lint, type-check and run every test.
# Extra arguments go to pytest, e.g. ./test.sh -m "not slow" for the quick set.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# A real OpenAI-compatible LLM server for the LLM-path tests: llama-cpp-python builds
# from source (minutes, once; pip caches the wheel). Portable build flags so the cached
# wheel runs on any x86-64. SWARMD_SKIP_LLAMA=1 skips it (those tests then skip).
if [ -z "${SWARMD_SKIP_LLAMA:-}" ] && ! .venv/bin/python -c "import llama_cpp.server.app, gguf" 2>/dev/null; then
  echo "installing llama-cpp-python (a source build the first time: several minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip install -q 'llama-cpp-python[server]' gguf numpy
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/pytest "$@"
