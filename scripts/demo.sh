#!/usr/bin/env bash
# Set up the checkout, then render the demo piece to out/demo.wav.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
mkdir -p out
.venv/bin/liveart render liveart/data/demo.mid -o out/demo.wav
echo "demo: wrote $REPO_ROOT/out/demo.wav"
