#!/usr/bin/env bash
# Set up the checkout, then render the demo piece to out/demo.wav: two Bach chorales, then the melody
# model (the shipped GRU) continues them for 8 bars; out/demo.mid is the MIDI that was played.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
mkdir -p out
.venv/bin/liveart render liveart/data/demo.mid --continue 8 -o out/demo.wav --midi-out out/demo.mid
echo "demo: wrote $REPO_ROOT/out/demo.wav (and out/demo.mid)"
