#!/usr/bin/env bash
# Set up the checkout, then run the test suite: scripts/test.sh [pytest arguments...]
# Exits non-zero when a test fails or when no tests are collected (pytest's exit status 5).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The tests need the train extra too: torch/ONNX parity and the data set builder.
LIVEART_EXTRAS=dev,train,plot bash "$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
exec "$REPO_ROOT/.venv/bin/python" -m pytest -q "$@"
