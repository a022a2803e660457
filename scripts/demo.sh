#!/usr/bin/env bash
# Set up the checkout, then render the demo piece: two Bach chorales, then the melody model (the
# shipped GRU) continues them for 8 bars. out/demo.wav is the sound, out/demo.mid the MIDI that was
# played, out/demo.mp4 the visualizer's pictures (the shipped generator, 512x512, 30 fps) with the
# sound, in sync.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO_ROOT/scripts/setup.sh"
cd "$REPO_ROOT"
mkdir -p out
.venv/bin/liveart render liveart/data/demo.mid --continue 8 -o out/demo.wav --midi-out out/demo.mid --video out/demo.mp4
echo "demo: wrote $REPO_ROOT/out/demo.wav, out/demo.mid and out/demo.mp4"
