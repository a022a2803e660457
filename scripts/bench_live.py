#!/usr/bin/env python3
"""Endurance of the live host on JACK: xruns and timing over a long run with everything active.

    .venv/bin/python scripts/bench_live.py [--seconds 600] [--period 64] [--voices 16] [--backend jack]
                                           [--target both|liveart|fluidsynth] [--gil-hog MS]

A private jackd (dummy backend, 48 kHz, ``--period`` frames) runs ``liveart play --virtual --mode free``
(the melody model generating all along, every channel decoded by the timbre model, the take saved);
the JACK test client of :mod:`liveart.testing.jackprobe` holds chords of ``--voices`` - 1 notes
(plus the model's own note: ``--voices`` sounding voices), a new chord every 2 s, and counts the
xruns the server reports. At the end liveart's own log gives the callback's timing, late model notes
and timbre frames. ``--target fluidsynth`` plays the same chords into FluidSynth (``-a jack -m
jack``, FluidR3_GM, started as scripts/bench_latency.py starts it) for the xruns of a C synth on the
same server; ``--target both`` (the default) runs FluidSynth, then liveart, on the same server and
prints both. ``--gil-hog MS`` makes a thread inside liveart hold the GIL MS milliseconds at a time
(10 ms apart), and prints how many callbacks ran during each hold. Prints one block of figures per
target; nothing is asserted (the targets live in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import DEFAULT_SOUNDFONT, chromium, fluidsynth_target, free_port, running, visual_figures  # noqa: E402
from liveart.testing.jackprobe import JackServer, Probe  # noqa: E402

CHORD_SECONDS = 2.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--period", type=int, default=64)
    parser.add_argument("--voices", type=int, default=16)
    parser.add_argument("--backend", default="jack", choices=("jack", "portaudio"))
    parser.add_argument("--patch", default="default")
    parser.add_argument("--target", default="both", choices=("both", "liveart", "fluidsynth"))
    parser.add_argument("--gil-hog", type=float, metavar="MS", default=None,
                        help="a thread inside liveart holds the GIL this many milliseconds at a time")
    parser.add_argument("--liveart-args", default="", help="more arguments to 'liveart play' (e.g. '--no-melody')")
    parser.add_argument("--visual", type=Path, metavar="MODEL.onnx", default=None,
                        help="liveart also shows the visualizer (this generator) in a headless Chromium")
    args = parser.parse_args(argv)
    print("#", shlex.join([sys.executable, *sys.argv]), flush=True)
    sr = 48000
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp, JackServer(sample_rate=sr, period=args.period) as server, \
            Probe("endurance-probe") as probe:
        if args.target in ("fluidsynth", "both"):
            target = fluidsynth_target(server, DEFAULT_SOUNDFONT)
            with running(target, server, Path(tmp)) as (proc, _log):
                midi_in = probe.wait_for_port(target.midi_port, timeout_s=60, is_midi=True, is_input=True,
                                              process=proc)
                probe.connect_midi_to(midi_in)
                time.sleep(1.0)
                xruns, minutes = _play_chords(probe, args, sr)
                alive = proc.poll() is None
            print(f"fluidsynth, period {args.period} frames ({1000 * args.period / sr:.2f} ms), {args.voices - 1} "
                  f"voices, {minutes:.1f} min{'' if alive else ' (it exited during the run)'}")
            print(f"xruns (server, during the run): {xruns}", flush=True)
            if not alive:
                return 1
            if args.target == "fluidsynth":
                return 0
        argv = [sys.executable, "-m", "liveart", "play", "--backend", args.backend, "--midi-api", "jack", "--virtual",
                "--mode", "free", "--no-status", "--patch", args.patch, "--takes", tmp, *shlex.split(args.liveart_args)]
        url = None
        if args.visual is not None:
            port = free_port()
            argv += ["--visual", "--visual-model", str(args.visual), "--visual-port", str(port)]
            url = f"http://127.0.0.1:{port}/"
        env = dict(server.env)
        if args.gil_hog:
            env["LIVEART_TEST_GIL_HOG_MS"] = str(args.gil_hog)
        proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        midi_in = probe.wait_for_port(r"^liveart(:midi_in| in:)", timeout_s=60, is_midi=True, is_input=True,
                                      process=proc)
        probe.connect_midi_to(midi_in)
        with chromium(url, Path(tmp)):
            time.sleep(1.0)
            started = time.time()
            xruns, minutes = _play_chords(probe, args, sr)
            visual = visual_figures(url, started) if url is not None else None
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        logs = list(Path(tmp).glob("*.log.json"))
        if proc.returncode != 0 or not logs:
            print(f"liveart play failed (status {proc.returncode}): {err.strip()[-500:]}", file=sys.stderr)
            return 1
        log = json.loads(logs[0].read_text())
    t, st = log["timing"], log["stats"]
    print(f"backend {args.backend}, period {args.period} frames ({t['block_ms']:.2f} ms), {args.voices} voices, "
          f"{minutes:.1f} min")
    print(f"xruns (server, during the run): {xruns}   liveart's count over its whole run: {st['xruns']}")
    print(f"callbacks {st['callbacks']}, over their period {t['callbacks_over_period']}; "
          f"callback p50/p99/max {t['callback_ms_p50']:.2f}/{t['callback_ms_p99']:.2f}/{t['callback_ms_max']:.2f} ms; "
          f"start into the cycle p99/max {t['callback_start_frames_p99']:.0f}/{t['callback_start_frames_max']} frames")
    print(f"model notes {st['generated_notes']}, late {st['generated_late']} (max {st['generated_late_max_frames']} "
          f"frames); melody step p50/p99 {t['melody_step_ms_p50']:.2f}/{t['melody_step_ms_p99']:.2f} ms")
    if visual is not None:
        print(visual)
    print(f"timbre frames late {t['timbre_late_frames']}, decode p99 {t['timbre_decode_ms_p99']:.2f} ms; "
          f"frames caught up after xruns {st['caught_up_frames']}, slipped {st['slipped_frames']}")
    if "gil_hog" in log:
        holds = np.array(log["gil_hog"]["callbacks_per_hold"])
        expected = log["gil_hog"]["hold_ms"] * 1e-3 * sr / args.period
        print(f"GIL held {log['gil_hog']['hold_ms']:g} ms at a time, {len(holds)} times: callbacks per hold "
              f"min/median {holds.min()}/{np.median(holds):.0f} (a period every {expected:.1f} per hold)")
    return 0


def _play_chords(probe: Probe, args, sr: int) -> tuple[int, float]:
    """Hold chords of ``args.voices`` - 1 notes, a new one every CHORD_SECONDS, for ``args.seconds``;
    returns (xruns the server reported meanwhile, minutes taken)."""
    rng = np.random.default_rng(0)
    first = probe.frame_time + sr // 2
    hop = int(CHORD_SECONDS * sr)
    events, held = [], []
    for k in range(int(args.seconds / CHORD_SECONDS)):
        f = first + k * hop
        events += [(f, bytes([0x80, n, 0])) for n in held]
        held = sorted(rng.choice(np.arange(40, 90), size=args.voices - 1, replace=False).tolist())
        events += [(f + 1 + i, bytes([0x90, n, 70])) for i, n in enumerate(held)]
    end = first + int(args.seconds * sr)
    events += [(end, bytes([0x80, n, 0])) for n in held]
    xruns_before = probe.xruns
    started = time.monotonic()
    probe.schedule(events)
    probe.wait_until_frame(end + sr // 2, timeout_s=args.seconds + 60)
    return probe.xruns - xruns_before, (time.monotonic() - started) / 60


if __name__ == "__main__":
    sys.exit(main())
